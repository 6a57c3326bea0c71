"""Decoders for TFLite_Detection_PostProcess SSDs, YOLOv3 with in-graph NMS and raw
Ultralytics YOLO (v5/v8): detection from the signature, preprocessing defaults, and
boxes that come back exactly where they were planted."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.support.onnx_models import planted_output_nodes
from tests.support.paths import FIXTURES
from twinfer.decoders.base import DecodeParams
from twinfer.decoders.tflite_ssd import TfliteSsdPostprocessDecoder
from twinfer.decoders.yolo import YoloDecoder
from twinfer.decoders.yolov3 import YoloV3NmsDecoder
from twinfer.engines import EngineOptions
from twinfer.imaging import Geometry
from twinfer.loader import load_model
from twinfer.signature import ModelSignature, TensorInfo
from twinfer.spec import NORMALIZE_PRESETS

MODELS = FIXTURES / "models"
ROCKET = (FIXTURES / "images" / "rocket.jpg").read_bytes()
MAX_PIXELS = 50_000_000
F32 = np.dtype(np.float32)


def identity_geometry(width: int, height: int) -> Geometry:
    """A picture exactly the model input's size: no scaling, no padding."""
    return Geometry(width, height, width, height, width, height, 1.0, 1.0, 0.0, 0.0)


def model_dir(tmp_path: Path, model: Path, labels: list[str], metadata: dict | None = None) -> Path:
    directory = tmp_path / "ref"
    directory.mkdir()
    shutil.copy(model, directory / model.name)
    (directory / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    if metadata is not None:
        (directory / "twinfer.json").write_text(json.dumps(metadata), encoding="utf-8")
    return directory


def assert_unit_boxes(boxes: np.ndarray) -> None:
    assert boxes.dtype == np.float32 and boxes.shape[1] == 4
    assert np.all((boxes >= 0.0) & (boxes <= 1.0))


# --- TFLite_Detection_PostProcess -----------------------------------------------------

# COCO-style label map: a leading background line and an inner "???" gap (COCO id 12).
COCO_HEAD = ["???", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
             "traffic light", "fire hydrant", "???", "stop sign"]


def test_ref_ssd_postprocess_loads_and_detects(tmp_path: Path) -> None:
    model = load_model(model_dir(tmp_path, MODELS / "ref_ssd_postprocess_300.tflite", COCO_HEAD), "ref", "1", EngineOptions())
    assert model.spec.decoder == "tflite_ssd_postprocess"
    assert isinstance(model.decoder, TfliteSsdPostprocessDecoder)
    assert model.engine.signature.image_input.dtype == np.uint8
    assert (model.spec.input.layout, model.spec.input.resize, model.spec.input.color) == ("NHWC", "stretch", "RGB")
    assert (model.input_width, model.input_height) == (300, 300)
    # Ids start at the first real class: only the leading "???" is skipped, the gap stays.
    assert model.label_offset == 1
    assert [model.label(i) for i in (0, 10, 11, 12)] == ["person", "fire hydrant", "???", "stop sign"]
    result = model.detect(ROCKET, max_pixels=MAX_PIXELS, threshold=0.0)
    assert len(result.detections) <= 10
    assert_unit_boxes(result.detections.boxes)
    assert np.all(np.diff(result.detections.scores) <= 0)


def tf2_signature(standard_names: bool) -> ModelSignature:
    """TF2 export order: scores, boxes, count, classes."""
    op = "TFLite_Detection_PostProcess"
    names = [f"{op}:2", op, f"{op}:3", f"{op}:1"] if standard_names else [
        "StatefulPartitionedCall:1", "StatefulPartitionedCall:3", "StatefulPartitionedCall:0", "StatefulPartitionedCall:2"
    ]
    shapes = [(1, 5), (1, 5, 4), (1,), (1, 5)]
    return ModelSignature(
        inputs=(TensorInfo("serving_default_input:0", (1, 320, 320, 3), np.dtype(np.uint8)),),
        outputs=tuple(TensorInfo(n, s, F32) for n, s in zip(names, shapes)),
    )


@pytest.mark.parametrize("standard_names", [False, True])
def test_ssd_postprocess_tf2_output_order(standard_names: bool) -> None:
    signature = tf2_signature(standard_names)
    assert TfliteSsdPostprocessDecoder.matches(signature)
    decoder = TfliteSsdPostprocessDecoder(signature, {})
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [0.3, 0.0, 0.9, 0.4], [0.0, 0.5, 0.2, 1.0], [0.5, 0.5, 0.6, 0.6],
                       [0.0, 0.0, 0.0, 0.0]]], np.float32)  # ymin, xmin, ymax, xmax
    scores = np.array([[0.9, 0.75, 0.4, 0.1, 0.0]], np.float32)
    classes = np.array([[17.0, 0.0, 62.0, 3.0, 0.0]], np.float32)
    count = np.array([4.0], np.float32)  # the fifth row is padding
    outputs = [scores, boxes, count, classes]
    found = decoder.decode(outputs, identity_geometry(320, 320), DecodeParams(0.3, 0.5, 100))
    np.testing.assert_allclose(found.boxes, [[0.2, 0.1, 0.6, 0.5], [0.0, 0.3, 0.4, 0.9], [0.5, 0.0, 1.0, 0.2]], atol=1e-6)
    np.testing.assert_allclose(found.scores, [0.9, 0.75, 0.4], atol=1e-6)
    assert found.class_ids.tolist() == [17, 0, 62]
    capped = decoder.decode(outputs, identity_geometry(320, 320), DecodeParams(0.0, 0.5, 2))
    assert capped.class_ids.tolist() == [17, 0]


def test_ssd_postprocess_tf1_order_maps_through_stretch_geometry() -> None:
    op = "TFLite_Detection_PostProcess"
    signature = ModelSignature(
        inputs=(TensorInfo("image", (1, 300, 300, 3), np.dtype(np.uint8)),),
        outputs=tuple(
            TensorInfo(n, s, F32) for n, s in zip([op, f"{op}:1", f"{op}:2", f"{op}:3"], [(1, 2, 4), (1, 2), (1, 2), (1,)])
        ),
    )
    decoder = TfliteSsdPostprocessDecoder(signature, {})
    # A 600x300 picture stretched to 300x300: normalised coordinates are unchanged.
    geometry = Geometry(600, 300, 600, 300, 300, 300, 0.5, 1.0, 0.0, 0.0)
    outputs = [np.array([[[0.25, 0.5, 0.75, 1.0], [0, 0, 0, 0]]], np.float32), np.array([[1.0, 0.0]], np.float32),
               np.array([[1.0, 0.0]], np.float32), np.array([1.0], np.float32)]
    found = decoder.decode(outputs, geometry, DecodeParams(0.5, 0.5, 10))
    np.testing.assert_allclose(found.boxes, [[0.5, 0.25, 1.0, 0.75]], atol=1e-6)
    assert found.class_ids.tolist() == [1] and found.scores.tolist() == [1.0]


# --- YOLOv3 with in-graph NMS -----------------------------------------------------------


def test_ref_tiny_yolov3_loads_and_detects(tmp_path: Path) -> None:
    labels = [f"class{i}" for i in range(80)]
    model = load_model(model_dir(tmp_path, MODELS / "ref_tiny_yolov3_11.onnx", labels), "ref", "1", EngineOptions())
    assert model.spec.decoder == "yolov3_nms"
    assert isinstance(model.decoder, YoloV3NmsDecoder)
    spec = model.spec.input
    assert (spec.layout, spec.resize, spec.pad_value, spec.color) == ("NCHW", "letterbox", 128, "RGB")
    assert (spec.mean, spec.std) == NORMALIZE_PRESETS["zero_to_one"]
    assert model.engine.signature.image_input.dtype == np.float32
    assert (model.input_width, model.input_height) == (416, 416)
    assert model.label_offset == 0
    result = model.detect(ROCKET, max_pixels=MAX_PIXELS, threshold=0.0)
    assert_unit_boxes(result.detections.boxes)
    assert np.all(np.diff(result.detections.scores) <= 0)


def yolov3_signature() -> ModelSignature:
    return ModelSignature(
        inputs=(TensorInfo("input_1", (1, 3, 416, 416), F32), TensorInfo("image_shape", (1, 2), F32)),
        outputs=(
            TensorInfo("yolonms_layer_1", (1, 6, 4), F32),
            TensorInfo("yolonms_layer_1:1", (1, 80, 6), F32),
            TensorInfo("yolonms_layer_1:2", (1, None, 3), np.dtype(np.int32)),
        ),
    )


def test_yolov3_extra_inputs_feed_the_decoded_size() -> None:
    decoder = YoloV3NmsDecoder(yolov3_signature(), {})
    # A 1280x854 JPEG decoded at 1/2 scale: the model is told the decoded size.
    geometry = Geometry(1280, 854, 640, 427, 416, 416, 0.65, 0.65, 0.0, 69.0)
    feeds = decoder.extra_inputs(geometry)
    assert list(feeds) == ["image_shape"]
    assert feeds["image_shape"].dtype == np.float32
    assert feeds["image_shape"].tolist() == [[427.0, 640.0]]


@pytest.mark.parametrize("indices_shape", [(1, -1, 3), (-1, 3)])
def test_yolov3_decode_gathers_planted_boxes(indices_shape: tuple[int, ...]) -> None:
    signature = yolov3_signature()
    assert YoloV3NmsDecoder.matches(signature)
    decoder = YoloV3NmsDecoder(signature, {})
    width, height = 640, 480
    boxes = np.zeros((1, 6, 4), np.float32)
    boxes[0, 1] = [48, 64, 240, 320]  # y1, x1, y2, x2 in decoded pixels
    boxes[0, 4] = [0, 320, 480, 640]
    boxes[0, 5] = [-10, -20, 100, 700]  # spills over the picture: clipped
    scores = np.zeros((1, 80, 6), np.float32)
    scores[0, 16, 1] = 0.7
    scores[0, 0, 4] = 0.95
    scores[0, 2, 5] = 0.5
    scores[0, 9, 3] = 0.1  # selected by the graph but under the threshold
    indices = np.array([[0, 16, 1], [0, 2, 5], [0, 0, 4], [0, 9, 3]], np.int32).reshape(indices_shape)
    geometry = Geometry(width, height, width, height, 416, 416, 0.65, 0.65, 0.0, 52.0)
    found = decoder.decode([boxes, scores, indices], geometry, DecodeParams(0.3, 0.5, 100))
    np.testing.assert_allclose(
        found.boxes, [[0.5, 0.0, 1.0, 1.0], [0.1, 0.1, 0.5, 0.5], [0.0, 0.0, 1.0, 100 / 480]], atol=1e-6
    )
    np.testing.assert_allclose(found.scores, [0.95, 0.7, 0.5], atol=1e-6)
    assert found.class_ids.tolist() == [0, 16, 2]
    assert found.class_ids.dtype == np.int64 and found.scores.dtype == np.float32
    capped = decoder.decode([boxes, scores, indices], geometry, DecodeParams(0.0, 0.5, 2))
    assert capped.class_ids.tolist() == [0, 16]
    none = decoder.decode([boxes, scores, np.zeros((1, 0, 3), np.int32).reshape(indices_shape)], geometry,
                          DecodeParams(0.0, 0.5, 100))
    assert len(none) == 0 and none.boxes.shape == (0, 4)


# --- Raw Ultralytics YOLO -----------------------------------------------------------------

INPUT = 64
NUM_CLASSES = 3
# Planted candidates: (cx, cy, w, h) in input pixels, class, score.
BOX_A = ((16.0, 16.0, 16.0, 16.0), 0, 0.9)
BOX_B = ((44.0, 40.0, 24.0, 16.0), 2, 0.8)
DUPLICATE_A = ((17.0, 16.0, 16.0, 16.0), 0, 0.6)  # IoU ~0.88 with A, lower score
EXPECTED_BOXES = [[8 / 64, 8 / 64, 24 / 64, 24 / 64], [32 / 64, 32 / 64, 56 / 64, 48 / 64]]


def planted_rows(num: int = 10) -> np.ndarray:
    """(num, 4 + nc) rows: the three planted candidates, the rest faint noise."""
    rng = np.random.default_rng(0)
    rows = np.zeros((num, 4 + NUM_CLASSES), np.float32)
    rows[:, :2] = rng.uniform(8, 56, (num, 2))
    rows[:, 2:4] = rng.uniform(4, 16, (num, 2))
    rows[:, 4:] = rng.uniform(0.0, 0.05, (num, NUM_CLASSES))
    for row, (box, cls, score) in zip((0, 4, 7), (BOX_A, DUPLICATE_A, BOX_B)):
        rows[row, :4] = box
        rows[row, 4 + cls] = score
    return rows


def v8_tensor() -> np.ndarray:
    return planted_rows().T[np.newaxis].copy()  # [1, 4 + nc, N]


def v5_tensor() -> np.ndarray:
    """[1, N, 5 + nc]; objectness 0.9 on planted rows (0.5 elsewhere), class scores
    divided by it so that objectness * class score is the planted score."""
    rows = planted_rows()
    objectness = np.full((len(rows), 1), 0.5, np.float32)
    objectness[[0, 4, 7]] = 0.9
    classes = rows[:, 4:] / objectness
    return np.concatenate([rows[:, :4], objectness, classes], axis=1)[np.newaxis]


def constant_onnx(path: Path, planted: np.ndarray) -> None:
    """A model whose output is ``planted`` whatever the image (the image still feeds it)."""
    nodes = planted_output_nodes(planted)
    graph = helper.make_graph(
        nodes,
        "planted_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, INPUT, INPUT])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(planted.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def png_picture(size: int = INPUT) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    return encoded.tobytes()


@pytest.mark.parametrize("planted", [v8_tensor(), v5_tensor()], ids=["v8", "v5"])
def test_yolo_onnx_returns_the_planted_boxes(tmp_path: Path, planted: np.ndarray) -> None:
    path = tmp_path / "yolo.onnx"
    constant_onnx(path, planted)
    model = load_model(model_dir(tmp_path, path, ["cat", "dog", "bird"]), "yolo", "1", EngineOptions())
    assert model.spec.decoder == "yolo"
    assert isinstance(model.decoder, YoloDecoder)
    spec = model.spec.input
    assert (spec.layout, spec.resize, spec.pad_value, spec.color) == ("NCHW", "letterbox", 114, "RGB")
    assert (spec.mean, spec.std) == NORMALIZE_PRESETS["zero_to_one"]
    result = model.detect(png_picture(), max_pixels=MAX_PIXELS, threshold=0.25)
    found = result.detections
    np.testing.assert_allclose(found.boxes, EXPECTED_BOXES, atol=1e-6)
    np.testing.assert_allclose(found.scores, [0.9, 0.8], atol=1e-6)
    assert found.class_ids.tolist() == [0, 2]
    assert [model.label(int(c)) for c in found.class_ids] == ["cat", "bird"]


def yolo_signature(output_shape: tuple[int, ...]) -> ModelSignature:
    return ModelSignature(
        inputs=(TensorInfo("images", (1, 3, INPUT, INPUT), F32),),
        outputs=(TensorInfo("output0", output_shape, F32),),
    )


@pytest.mark.parametrize(
    ("planted", "variant"),
    [(v8_tensor().transpose(0, 2, 1), "v8"), (v5_tensor().transpose(0, 2, 1), "v5")],
    ids=["v8-transposed", "v5-transposed"],
)
def test_yolo_variant_option_reads_transposed_exports(planted: np.ndarray, variant: str) -> None:
    decoder = YoloDecoder(yolo_signature(planted.shape), {"variant": variant})
    found = decoder.decode([planted], identity_geometry(INPUT, INPUT), DecodeParams(0.25, 0.5, 100))
    np.testing.assert_allclose(found.boxes, EXPECTED_BOXES, atol=1e-6)
    np.testing.assert_allclose(found.scores, [0.9, 0.8], atol=1e-6)
    assert found.class_ids.tolist() == [0, 2]


def test_yolo_letterbox_maps_back_to_a_wide_picture() -> None:
    # A 128x64 picture letterboxed into 64x64: content 64x32 with 16 px bars above and below.
    decoder = YoloDecoder(yolo_signature((1, 7, 10)), {})
    geometry = Geometry(128, 64, 128, 64, INPUT, INPUT, 0.5, 0.5, 0.0, 16.0)
    found = decoder.decode([v8_tensor()], geometry, DecodeParams(0.25, 0.5, 1))
    # Box A (8, 8, 24, 24) in input pixels: y is clipped at the top bar.
    np.testing.assert_allclose(found.boxes, [[8 / 64, 0.0, 24 / 64, 8 / 32]], atol=1e-6)
    assert found.class_ids.tolist() == [0]


def test_yolo_matching_and_options() -> None:
    assert YoloDecoder.matches(yolo_signature((1, 84, 8400)))
    assert YoloDecoder.matches(yolo_signature((1, 25200, 85)))
    assert YoloDecoder.matches(yolo_signature((1, 84, None)))
    assert not YoloDecoder.matches(yolo_signature((1, 4, 8400)))
    assert not YoloDecoder.matches(yolo_signature((1, 8400, 84, 1)))
    assert not YoloDecoder.matches(yolov3_signature())
    with pytest.raises(ValueError, match="variant"):
        YoloDecoder(yolo_signature((1, 84, 8400)), {"variant": "v7"})


def test_nms_work_is_capped_when_every_candidate_passes_the_threshold():
    """threshold=0 on 8400 YOLO candidates: only the best NMS_CANDIDATES are suppressed over."""
    from twinfer.decoders.base import NMS_CANDIDATES, DecodeParams, nms

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 0.9, (8400, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + 0.05], axis=1)
    scores = rng.uniform(0, 1, 8400).astype(np.float32)
    found = nms(boxes, scores, np.zeros(8400, np.int64), DecodeParams(0.0, 0.5, 10000))
    assert 0 < len(found) <= NMS_CANDIDATES
    assert found.scores[0] == scores.max()
    assert found.scores.min() >= np.sort(scores)[-NMS_CANDIDATES]


def test_yolo_normalized_box_option_reads_tflite_style_exports() -> None:
    planted = v8_tensor()
    planted[0, :4] /= INPUT  # Ultralytics TFLite exports: cx, cy, w, h already in 0..1
    decoder = YoloDecoder(yolo_signature(planted.shape), {"boxes": "normalized"})
    found = decoder.decode([planted], identity_geometry(INPUT, INPUT), DecodeParams(0.25, 0.5, 100))
    np.testing.assert_allclose(found.boxes, EXPECTED_BOXES, atol=1e-6)
    with pytest.raises(ValueError, match="boxes"):
        YoloDecoder(yolo_signature(planted.shape), {"boxes": "inches"})
