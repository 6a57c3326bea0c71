"""Every task on real models and real photos: segmentation, pose and face landmarks
through their MediaPipe detectors, classification, and one model in ONNX and TFLite."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.support.paths import DEFAULT_MODEL, IMAGES
from tests.support.task_models import (
    FACE_MESH_CHAIN,
    POSE_CHAIN,
    colour_classifier,
    model_dir,
    model_files,
    planted_classifier,
)
from twinfer.chain import ChainError, check_detector, predict_chained
from twinfer.decoders.topologies import POSE_NAMES
from twinfer.engines import EngineOptions
from twinfer.loader import ModelLoadError, load_model
from twinfer.pipeline import PredictOptions, VisionModel
from twinfer.tasks import CLASSIFICATION, DETECTION, KEYPOINTS, SEGMENTATION

ASTRONAUT = (IMAGES / "astronaut.png").read_bytes()  # 512x512, one person, face ~[180, 82, 274, 176] px
OPTIONS = EngineOptions(intra_op_threads=1, use_host_artifacts=False)
MAX_PIXELS = 50_000_000


def _load(tmp_path: Path, name: str, files: dict[str, bytes]) -> VisionModel:
    return load_model(model_dir(tmp_path, name, files), name, "1", OPTIONS)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, VisionModel]:
    root = tmp_path_factory.mktemp("tasks")
    return {
        "selfie": _load(root, "selfie", model_files("mp_selfie_segmentation.tflite")),
        "pose-detector": _load(root, "pose-detector", model_files("mp_pose_detection.tflite")),
        "pose": _load(root, "pose", model_files("mp_pose_landmark_full.tflite", {"chain": POSE_CHAIN})),
        "face": _load(root, "face", model_files("blazeface_short_range.tflite")),
        "face-onnx": _load(root, "face-onnx", model_files("blazeface_short_range.onnx")),
        "mesh": _load(root, "mesh", model_files("mp_face_landmark.tflite", {"chain": FACE_MESH_CHAIN})),
        "ssd": load_model(DEFAULT_MODEL, "ssd", "1", OPTIONS),
    }


def test_tasks_and_preprocessing_are_detected_from_the_signatures(models):
    assert {name: m.task for name, m in models.items()} == {
        "selfie": SEGMENTATION, "pose-detector": DETECTION, "pose": KEYPOINTS, "face": DETECTION,
        "face-onnx": DETECTION, "mesh": KEYPOINTS, "ssd": DETECTION}
    assert models["pose"].decoder.topology.name == "pose" and models["mesh"].decoder.topology.name == "face_mesh"
    assert models["pose-detector"].labels == ["person"] and models["pose-detector"].decoder.keypoint_count == 4
    assert models["pose-detector"].spec.input.mean == (127.5,) * 3  # MediaPipe's [-1, 1]
    assert models["pose"].spec.input.std == (255.0,) * 3  # [0, 1]
    assert models["selfie"].labels == ["background", "selfie"]  # its embedded label names the foreground


def test_selfie_segmentation_covers_the_astronaut(models):
    mask = models["selfie"].predict(ASTRONAUT, MAX_PIXELS).result
    assert mask.class_map.shape == (512, 512)
    coverage = mask.coverage()
    assert 0.2 < coverage[1] < 0.8 and coverage.sum() == pytest.approx(1.0)
    assert mask.class_map[256, 256] == 1  # her chest
    assert mask.class_map[5, 5] == 0 and mask.class_map[5, 506] == 0  # the top corners are background
    stricter = models["selfie"].predict(ASTRONAUT, MAX_PIXELS, PredictOptions(threshold=0.99)).result
    assert stricter.coverage()[1] < coverage[1]


def test_a_letterboxed_mask_is_cut_to_the_picture_and_resized_to_it(tmp_path, models):
    wide = cv2.copyMakeBorder(cv2.imread(str(IMAGES / "astronaut.png")), 0, 0, 256, 256, cv2.BORDER_CONSTANT, value=0)
    boxed = _load(tmp_path, "boxed", model_files("mp_selfie_segmentation.tflite", {"input": {"resize": "letterbox"}}))
    mask = boxed.predict(cv2.imencode(".png", wide)[1].tobytes(), MAX_PIXELS).result
    assert mask.class_map.shape == (512, 1024)
    assert mask.class_map[256, 512] == 1 and mask.class_map[256, 20] == 0 and mask.class_map[256, 1000] == 0


def test_pose_landmarks_through_the_pose_detector_fall_in_anatomical_order(models):
    person = models["ssd"].predict(ASTRONAUT, MAX_PIXELS).result  # an independent person box: the SSD's
    box = person.boxes[list(models["ssd"].label(c) for c in person.class_ids).index("Person")]
    prediction = predict_chained(models["pose"], models["pose-detector"], ASTRONAUT, MAX_PIXELS)
    (crop,) = prediction.result
    assert crop.roi.rotation == pytest.approx(0.17, abs=0.15)  # she leans a little: the crop turns with her
    (body,) = crop.result
    assert body.score > 0.5
    at = {name: body.points[POSE_NAMES.index(name)] for name in ("nose", "left_shoulder", "right_shoulder")}
    for name, (x, y) in at.items():
        assert box[0] <= x <= box[2] and box[1] <= y <= box[3], (name, x, y, box)
    assert at["left_shoulder"][1] > at["nose"][1] and at["right_shoulder"][1] > at["nose"][1]
    assert at["left_shoulder"][0] > at["nose"][0] > at["right_shoulder"][0]  # facing the camera
    assert set(prediction.timings_ms) == {"decode", "detector", "crop", "inference", "total"}


def test_face_mesh_through_blazeface_puts_468_points_on_the_face(models):
    prediction = predict_chained(models["mesh"], models["face"], ASTRONAUT, MAX_PIXELS)
    (crop,) = prediction.result
    (face,) = crop.result
    assert face.points.shape == (468, 2) and face.score > 0.9
    px = face.points * 512
    roi = crop.roi  # the face box, squared and widened by 1.5 as MediaPipe's graph does
    inside = np.abs(px - (roi.x_center, roi.y_center)).max(axis=1) <= roi.width / 2 * 1.05
    assert inside.all()
    xmin, ymin, xmax, ymax = crop.box * 512  # BlazeFace's own box: the forehead rises above it
    in_box = (px[:, 0] >= xmin - 5) & (px[:, 0] <= xmax + 5) & (px[:, 1] >= ymin - 12) & (px[:, 1] <= ymax + 5)
    assert in_box.mean() > 0.95


def test_a_whole_picture_landmark_model_finds_no_small_face(models):
    """The face mesh needs a face crop; on the whole picture its presence is low: no instance."""
    assert models["mesh"].predict(ASTRONAUT, MAX_PIXELS).result == []
    found = models["mesh"].predict(ASTRONAUT, MAX_PIXELS, PredictOptions(threshold=0.0)).result
    assert len(found) == 1 and found[0].score < 0.5


def test_the_same_chain_in_onnx_and_tflite_gives_the_same_mesh(models):
    via_tflite = predict_chained(models["mesh"], models["face"], ASTRONAUT, MAX_PIXELS).result[0]
    via_onnx = predict_chained(models["mesh"], models["face-onnx"], ASTRONAUT, MAX_PIXELS).result[0]
    assert np.abs(via_tflite.box - via_onnx.box).max() * 512 < 1.0
    assert np.abs(via_tflite.result[0].points - via_onnx.result[0].points).max() * 512 < 1.5
    detect_tflite = models["face"].predict(ASTRONAUT, MAX_PIXELS).result
    detect_onnx = models["face-onnx"].predict(ASTRONAUT, MAX_PIXELS).result
    assert np.abs(detect_tflite.keypoints - detect_onnx.keypoints).max() * 512 < 1.0


def test_a_planted_classifier_answers_its_top_k(tmp_path):
    logits = [0.5, 3.0, -1.0, 2.0, 0.0, 1.0]
    labels = ["zero", "one", "two", "three", "four", "five"]
    model = _load(tmp_path, "planted", model_files("planted.onnx", {"top_k": 3}, labels,
                                                   model_bytes=planted_classifier(logits)))
    assert model.task == CLASSIFICATION and model.spec.score_threshold == 0.0
    classes = model.predict(ASTRONAUT, MAX_PIXELS).result
    assert [model.label(c) for c in classes.class_ids] == ["one", "three", "five"]
    expected = np.exp(logits) / np.exp(logits).sum()
    assert classes.scores == pytest.approx(expected[[1, 3, 5]], abs=1e-5)
    two = model.predict(ASTRONAUT, MAX_PIXELS, PredictOptions(top_k=2, threshold=0.3)).result
    assert two.class_ids.tolist() == [1]  # top 2, then the threshold drops "three" (0.22)
    sigmoid = _load(tmp_path, "multi", model_files("planted.onnx", {"decoder_options": {"activation": "sigmoid"}},
                                                   labels, model_bytes=planted_classifier(logits)))
    scores = sigmoid.predict(ASTRONAUT, MAX_PIXELS).result.scores
    assert scores[0] == pytest.approx(1 / (1 + np.exp(-3.0)), abs=1e-5)


def test_a_classifier_on_each_person_box_of_the_ssd(tmp_path, models):
    chain = {"detector": "ssd", "labels": ["Person"], "max_crops": 4, "crop": {"scale": 1.0}}
    colour = _load(tmp_path, "colour", model_files("colour.onnx", {"chain": chain}, ["red", "green", "blue"],
                                                   model_bytes=colour_classifier()))
    prediction = predict_chained(colour, models["ssd"], ASTRONAUT, MAX_PIXELS)
    assert prediction.result and all(models["ssd"].label(c.class_id) == "Person" for c in prediction.result)
    crop = prediction.result[0]
    x0, y0, x1, y1 = (crop.box * 512).round().astype(int)
    region = cv2.cvtColor(cv2.imread(str(IMAGES / "astronaut.png")), cv2.COLOR_BGR2RGB)[y0:y1, x0:x1]
    expected = np.exp(region.reshape(-1, 3).mean(axis=0) / 255 * 20)
    expected /= expected.sum()
    assert crop.result.scores[0] == pytest.approx(expected.max(), abs=0.03)
    assert crop.result.class_ids[0] == int(np.argmax(expected))


def test_a_detector_that_cannot_feed_a_chain_is_refused_with_a_reason(models):
    with pytest.raises(ChainError, match="is a keypoints model, not a detector"):
        check_detector(models["pose"].spec.chain, models["mesh"])
    with pytest.raises(ChainError, match="uses keypoint 1 but detector 'pose-detector'.*gives 0 keypoints"):
        check_detector(models["pose"].spec.chain, models["ssd"])


def test_twinfer_json_names_a_task_the_signature_cannot_tell_or_refuses_a_wrong_one(tmp_path):
    model_bytes = planted_classifier([1.0, 2.0])
    as_task = _load(tmp_path, "named", model_files("c.onnx", {"task": "classification"}, model_bytes=model_bytes))
    assert as_task.task == CLASSIFICATION
    for metadata, message in (
        ({"task": "segmentation"}, "no segmentation decoder"),
        ({"task": "pose"}, "task must be one of"),
        ({"task": "keypoints", "decoder": "classification"}, "is a classification decoder"),
        ({"chain": {"detector": "ssd", "crop": {"rotation": 90}}}, "keypoints .* is needed"),
        ({"chain": {"detector": "ssd", "max_crops": 0}}, "max_crops must be an integer"),
    ):
        with pytest.raises(ModelLoadError, match=message):
            _load(tmp_path, "bad", model_files("c.onnx", metadata, model_bytes=model_bytes))
    with pytest.raises(ModelLoadError, match="a segmentation model is not fed crops"):
        _load(tmp_path, "bad", model_files("mp_selfie_segmentation.tflite", {"chain": {"detector": "face"}}))


def test_a_face_cut_by_the_edge_is_cropped_around_the_whole_face(models):
    """BlazeFace's box for a face the picture cuts runs past the edge; the answer clips it,
    the crop does not (MediaPipe's), so the mesh stays on the face."""
    cut = cv2.imread(str(IMAGES / "astronaut.png"))[:, 200:]
    data = cv2.imencode(".png", cut)[1].tobytes()
    prediction = predict_chained(models["mesh"], models["face"], data, MAX_PIXELS)
    (crop,) = prediction.result
    face = models["face"].predict(data, MAX_PIXELS).result
    assert face.boxes[0][0] == 0.0 and face.unclipped_boxes[0][0] < 0.0
    centre = (face.unclipped_boxes[0][0] + face.unclipped_boxes[0][2]) / 2 * cut.shape[1]
    assert crop.roi.x_center == pytest.approx(centre, abs=1.0)


def test_a_large_jpeg_is_decoded_as_small_as_the_crops_allow_with_the_same_landmarks(models):
    big = cv2.resize(cv2.imread(str(IMAGES / "astronaut.png")), (2048, 2048), interpolation=cv2.INTER_CUBIC)
    jpeg = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    small = predict_chained(models["mesh"], models["face"], ASTRONAUT, MAX_PIXELS).result[0].result[0]
    large = predict_chained(models["mesh"], models["face"], jpeg, MAX_PIXELS).result[0].result[0]
    assert np.abs(small.points - large.points).max() < 0.01  # normalised: under 1% of the picture
