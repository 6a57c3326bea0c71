"""SSD-with-anchors and BlazeFace decoders, on the real models through the real loader.

Expected results come from tests/fixtures/models/PROVENANCE.md (MediaPipe's own decode).
"""
from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.paths import PROJECT_ROOT
from twinfer import imaging
from twinfer.decoders import detect_decoder
from twinfer.decoders.anchors import AnchorOptions, generate_anchors
from twinfer.decoders.base import DecodeParams
from twinfer.decoders.blazeface import BlazeFaceDecoder
from twinfer.decoders.ssd_anchors import SsdAnchorsDecoder
from twinfer.engines import EngineOptions, open_engine
from twinfer.loader import ModelLoadError, load_model
from twinfer.pipeline import VisionModel
from twinfer.signature import ModelSignature, TensorInfo

ROOT = PROJECT_ROOT
MODELS = ROOT / "tests" / "fixtures" / "models"
IMAGES = ROOT / "tests" / "fixtures" / "images"
LABELS = MODELS / "oidv4_labelmap.txt"
SSD_FILES = {"onnx": ROOT / "models" / "default" / "model.onnx", "tflite": MODELS / "ssd_mobilenetv2_oidv4_fp16.tflite"}
FACE_FILES = {"onnx": MODELS / "blazeface_short_range.onnx", "tflite": MODELS / "blazeface_short_range.tflite"}
MAX_PIXELS = 50_000_000
F32 = np.dtype(np.float32)


def _bundle(root: Path, model_file: Path, labels: bool, metadata: dict | None = None) -> Path:
    root.mkdir(parents=True)
    shutil.copy(model_file, root / model_file.name)
    if labels:
        shutil.copy(LABELS, root / "labels.txt")
    if metadata is not None:
        (root / "twinfer.json").write_text(json.dumps(metadata), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def ssd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, VisionModel]:
    base = tmp_path_factory.mktemp("ssd")
    return {
        fmt: load_model(_bundle(base / fmt, path, labels=True), "ssd", "1", EngineOptions())
        for fmt, path in SSD_FILES.items()
    }


@pytest.fixture(scope="module")
def face(tmp_path_factory: pytest.TempPathFactory) -> dict[str, VisionModel]:
    base = tmp_path_factory.mktemp("face")
    return {
        fmt: load_model(_bundle(base / fmt, path, labels=False), "face", "1", EngineOptions())
        for fmt, path in FACE_FILES.items()
    }


def _image(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def _labelled(model: VisionModel, image: str) -> list[tuple[str, float]]:
    detections = model.detect(_image(image), max_pixels=MAX_PIXELS).detections
    return [(model.label(int(c)), float(s)) for c, s in zip(detections.class_ids, detections.scores)]


def _raw_outputs(model: VisionModel, image: str) -> tuple[list[np.ndarray], imaging.Geometry]:
    """The model's raw outputs and geometry for one picture, as the pipeline makes them."""
    data = _image(image)
    header = imaging.read_header(data, MAX_PIXELS)
    pixels, geometry = imaging.to_input(
        imaging.decode(data, header), header, model.spec.input, model.input_width, model.input_height
    )
    tensor = imaging.to_tensor(pixels, model.spec.input, model.engine.signature.image_input.dtype)
    return model.engine.run({model.engine.signature.image_input.name: tensor}), geometry


def _signature(*outputs: tuple[str, tuple[int, ...]], size: int = 300) -> ModelSignature:
    return ModelSignature(
        inputs=(TensorInfo("image", (1, size, size, 3), F32),),
        outputs=tuple(TensorInfo(name, shape, F32) for name, shape in outputs),
    )


# --- family detection -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "family"),
    [
        (SSD_FILES["onnx"], "ssd_anchors"),
        (SSD_FILES["tflite"], "ssd_anchors"),
        (FACE_FILES["onnx"], "blazeface"),
        (FACE_FILES["tflite"], "blazeface"),
    ],
)
def test_detect_decoder_picks_the_family_without_metadata(path: Path, family: str) -> None:
    assert detect_decoder(open_engine(path, EngineOptions()).signature).name == family


def test_loaded_models_use_the_detected_family_and_its_input(
    ssd: dict[str, VisionModel], face: dict[str, VisionModel]
) -> None:
    for model in ssd.values():
        assert model.decoder.name == "ssd_anchors"
        assert model.label_offset == 0  # class ids index the "???"-first label file directly
        assert (model.spec.input.resize, model.spec.input.color) == ("stretch", "RGB")
        assert model.spec.input.mean == model.spec.input.std == (127.5, 127.5, 127.5)
    for model in face.values():
        assert model.decoder.name == "blazeface"
        assert (model.spec.input.resize, model.spec.input.pad_value) == ("letterbox", 0)
        assert model.spec.input.mean == model.spec.input.std == (127.5, 127.5, 127.5)


def test_families_do_not_claim_each_other_or_the_post_processed_models() -> None:
    ssd_sig = open_engine(SSD_FILES["onnx"], EngineOptions()).signature
    face_sig = open_engine(FACE_FILES["onnx"], EngineOptions()).signature
    assert not BlazeFaceDecoder.matches(ssd_sig)
    assert not SsdAnchorsDecoder.matches(face_sig)
    for other in ("ref_ssd_postprocess_300.tflite", "ref_tiny_yolov3_11.onnx"):
        signature = open_engine(MODELS / other, EngineOptions()).signature
        assert not SsdAnchorsDecoder.matches(signature)
        assert not BlazeFaceDecoder.matches(signature)


def test_matches_accepts_either_output_order_and_keypoint_counts() -> None:
    assert SsdAnchorsDecoder.matches(_signature(("logits", (1, 1917, 24)), ("boxes", (1, 1917, 4))))
    assert not SsdAnchorsDecoder.matches(_signature(("a", (1, 1917, 4)), ("b", (1, 1000, 24))))
    assert not SsdAnchorsDecoder.matches(_signature(("a", (1, 1917, 4)), ("b", (1, 1917, 1))))
    assert BlazeFaceDecoder.matches(_signature(("scores", (1, 896, 1)), ("regressors", (1, 896, 6)), size=128))
    assert not BlazeFaceDecoder.matches(_signature(("r", (1, 896, 4)), ("s", (1, 896, 1)), size=128))
    assert not BlazeFaceDecoder.matches(_signature(("r", (1, 896, 7)), ("s", (1, 896, 1)), size=128))


# --- anchors ----------------------------------------------------------------------------


def test_oidv4_anchor_grid() -> None:
    anchors = generate_anchors(
        AnchorOptions(
            input_width=300,
            input_height=300,
            num_layers=6,
            min_scale=0.2,
            max_scale=0.95,
            strides=(16, 32, 64, 128, 256, 512),
            aspect_ratios=(1.0, 2.0, 0.5, 3.0, 1.0 / 3.0),
            reduce_boxes_in_lowest_layer=True,
        )
    )
    assert anchors.shape == (1917, 4) and anchors.dtype == np.float32
    # Lowest layer, first cell of the 19x19 map: (0.1, 1), (0.2, 2), (0.2, 0.5).
    np.testing.assert_allclose(anchors[:3, :2], 0.5 / 19, rtol=1e-6)
    np.testing.assert_allclose(anchors[:3, 2:], [[0.1, 0.1], [0.2 / 2**0.5, 0.2 * 2**0.5], [0.2 * 2**0.5, 0.2 / 2**0.5]], rtol=1e-6)
    # Last layer: one 1x1 cell, 6 anchors; the interpolated one is sqrt(0.95 * 1.0).
    np.testing.assert_allclose(anchors[-1], [0.5, 0.5, 0.95**0.5, 0.95**0.5], rtol=1e-6)


def test_blazeface_anchor_grid() -> None:
    anchors = generate_anchors(
        AnchorOptions(
            input_width=128,
            input_height=128,
            num_layers=4,
            min_scale=0.1484375,
            max_scale=0.75,
            strides=(8, 16, 16, 16),
            aspect_ratios=(1.0,),
            fixed_anchor_size=True,
        )
    )
    assert anchors.shape == (896, 4)
    assert np.all(anchors[:, 2:] == 1.0)
    np.testing.assert_allclose(anchors[0, :2], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[512, :2], [0.5 / 8, 0.5 / 8])  # first 8x8 cell after 16x16x2


def test_decoders_generate_1917_and_896_anchors() -> None:
    with pytest.raises(ValueError, match=r"give 1917 anchors but the model has 1000"):
        SsdAnchorsDecoder(_signature(("boxes", (1, 1000, 4)), ("logits", (1, 1000, 24))), {})
    with pytest.raises(ValueError, match=r"give 896 or 736 anchors but the model has 1000"):
        BlazeFaceDecoder(_signature(("regressors", (1, 1000, 16)), ("classificators", (1, 1000, 1)), size=128), {})


def test_wrong_anchor_options_raise_a_clear_error() -> None:
    signature = open_engine(SSD_FILES["onnx"], EngineOptions()).signature
    with pytest.raises(ValueError, match=r"num_layers is 5 but strides has 6"):
        SsdAnchorsDecoder(signature, {"num_layers": 5})
    with pytest.raises(ValueError, match=r"1911 anchors but the model has 1917; set decoder_options in twinfer.json"):
        SsdAnchorsDecoder(signature, {"num_layers": 5, "strides": [16, 32, 64, 128, 256]})
    with pytest.raises(ValueError, match=r"unknown decoder_options \['num_layer'\]"):
        SsdAnchorsDecoder(signature, {"num_layer": 6})
    with pytest.raises(ValueError, match=r"decoder_options.min_scale must be a number"):
        SsdAnchorsDecoder(signature, {"min_scale": "0.2"})


def test_wrong_anchor_options_in_twinfer_json_fail_the_load(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bad", FACE_FILES["tflite"], labels=False, metadata={"decoder_options": {"num_layers": 5}})
    with pytest.raises(ModelLoadError, match=r"num_layers is 5"):
        load_model(bundle, "face", "1", EngineOptions())


def test_explicit_default_options_change_nothing(ssd: dict[str, VisionModel]) -> None:
    signature = ssd["onnx"].engine.signature
    outputs, geometry = _raw_outputs(ssd["onnx"], "chelsea.png")
    params = DecodeParams(0.3, 0.5, 100)
    explicit = SsdAnchorsDecoder(
        signature,
        {"num_layers": 6, "strides": [16, 32, 64, 128, 256, 512], "x_scale": 10, "y_scale": 10, "h_scale": 5, "w_scale": 5},
    )
    a, b = SsdAnchorsDecoder(signature, {}).decode(outputs, geometry, params), explicit.decode(outputs, geometry, params)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)


# --- SSD on real pictures ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(SSD_FILES))
def test_ssd_finds_the_cat(ssd: dict[str, VisionModel], fmt: str) -> None:
    found = _labelled(ssd[fmt], "chelsea.png")
    assert found[0][0] == "Cat"
    assert found[0][1] > 0.7 and found[0][1] == pytest.approx(0.85, abs=0.03)


@pytest.mark.parametrize("fmt", sorted(SSD_FILES))
def test_ssd_finds_the_coffee_cup(ssd: dict[str, VisionModel], fmt: str) -> None:
    assert "Coffee cup" in [label for label, _ in _labelled(ssd[fmt], "coffee.png")]


@pytest.mark.parametrize("fmt", sorted(SSD_FILES))
def test_ssd_finds_the_person(ssd: dict[str, VisionModel], fmt: str) -> None:
    assert "Person" in [label for label, _ in _labelled(ssd[fmt], "astronaut.png")]


def test_ssd_cat_box_covers_the_cat(ssd: dict[str, VisionModel]) -> None:
    result = ssd["onnx"].detect(_image("chelsea.png"), max_pixels=MAX_PIXELS)
    box = result.detections.boxes[0] * ([result.header.width, result.header.height] * 2)
    # chelsea.png is 451x300 and the cat fills most of it.
    assert box[0] < 30 and box[1] < 30 and box[2] > 380 and box[3] > 270


def test_ssd_never_returns_background(ssd: dict[str, VisionModel]) -> None:
    outputs, geometry = _raw_outputs(ssd["onnx"], "astronaut.png")
    detections = ssd["onnx"].decoder.decode(outputs, geometry, DecodeParams(0.0, 0.5, 300))
    assert len(detections) > 10
    assert np.all(detections.class_ids >= 1)
    assert np.all(np.diff(detections.scores) <= 0)
    assert detections.boxes.dtype == np.float32 and np.all((detections.boxes >= 0) & (detections.boxes <= 1))


def test_ssd_reads_outputs_in_either_order(ssd: dict[str, VisionModel]) -> None:
    signature = ssd["onnx"].engine.signature
    swapped = ModelSignature(signature.inputs, signature.outputs[::-1])
    outputs, geometry = _raw_outputs(ssd["onnx"], "coffee.png")
    params = DecodeParams(0.3, 0.5, 100)
    straight = SsdAnchorsDecoder(signature, {}).decode(outputs, geometry, params)
    reversed_ = SsdAnchorsDecoder(swapped, {}).decode(outputs[::-1], geometry, params)
    np.testing.assert_array_equal(straight.boxes, reversed_.boxes)
    np.testing.assert_array_equal(straight.class_ids, reversed_.class_ids)


@pytest.mark.parametrize("image", ["chelsea.png", "coffee.png", "astronaut.png"])
def test_ssd_onnx_and_tflite_agree(ssd: dict[str, VisionModel], image: str) -> None:
    onnx = ssd["onnx"].detect(_image(image), max_pixels=MAX_PIXELS).detections
    lite = ssd["tflite"].detect(_image(image), max_pixels=MAX_PIXELS).detections
    assert len(onnx) > 0
    np.testing.assert_array_equal(onnx.class_ids, lite.class_ids)
    np.testing.assert_allclose(onnx.boxes, lite.boxes, atol=1e-3)
    np.testing.assert_allclose(onnx.scores, lite.scores, atol=1e-3)


# --- BlazeFace on real pictures ---------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(FACE_FILES))
def test_blazeface_finds_the_astronauts_face(face: dict[str, VisionModel], fmt: str) -> None:
    result = face[fmt].detect(_image("astronaut.png"), max_pixels=MAX_PIXELS)
    detections = result.detections
    assert (result.header.width, result.header.height) == (512, 512)
    assert len(detections) == 1
    assert detections.scores[0] == pytest.approx(0.92, abs=0.02)
    assert int(detections.class_ids[0]) == 0
    assert face[fmt].label(0) == "face"  # no label file in the bundle: the family names its class
    xmin, ymin, xmax, ymax = detections.boxes[0] * 512
    np.testing.assert_allclose([ymin, xmin, ymax, xmax], [82, 180, 176, 274], atol=6)


@pytest.mark.parametrize("image", ["chelsea.png", "coffee.png"])
def test_blazeface_finds_no_face_where_there_is_none(face: dict[str, VisionModel], image: str) -> None:
    assert len(face["onnx"].detect(_image(image), max_pixels=MAX_PIXELS).detections) == 0


def test_blazeface_onnx_and_tflite_agree(face: dict[str, VisionModel]) -> None:
    onnx = face["onnx"].detect(_image("astronaut.png"), max_pixels=MAX_PIXELS).detections
    lite = face["tflite"].detect(_image("astronaut.png"), max_pixels=MAX_PIXELS).detections
    assert len(onnx) == len(lite) == 1
    np.testing.assert_array_equal(onnx.class_ids, lite.class_ids)
    np.testing.assert_allclose(onnx.boxes, lite.boxes, atol=1e-3)
    np.testing.assert_allclose(onnx.scores, lite.scores, atol=1e-3)


def test_blazeface_reads_outputs_in_either_order(face: dict[str, VisionModel]) -> None:
    signature = face["onnx"].engine.signature
    swapped = ModelSignature(signature.inputs, signature.outputs[::-1])
    outputs, geometry = _raw_outputs(face["onnx"], "astronaut.png")
    params = DecodeParams(0.5, 0.3, 100)
    straight = BlazeFaceDecoder(signature, {}).decode(outputs, geometry, params)
    reversed_ = BlazeFaceDecoder(swapped, {}).decode(outputs[::-1], geometry, params)
    assert len(straight) == 1
    np.testing.assert_array_equal(straight.boxes, reversed_.boxes)


# --- hot path ---------------------------------------------------------------------------


def test_decode_is_well_under_a_millisecond(ssd: dict[str, VisionModel], face: dict[str, VisionModel]) -> None:
    for model, image in ((ssd["onnx"], "astronaut.png"), (face["onnx"], "astronaut.png")):
        outputs, geometry = _raw_outputs(model, image)
        params = model.params(None, None)
        samples = []
        for _ in range(200):
            started = time.perf_counter()
            model.decoder.decode(outputs, geometry, params)
            samples.append(time.perf_counter() - started)
        assert statistics.median(samples) < 1e-3, model.decoder.name
