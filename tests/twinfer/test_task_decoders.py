"""Task decoders on signatures and outputs built here: which family reads which model, and
what they make of known values (the real models are in test_tasks_real_models.py)."""
from __future__ import annotations

import numpy as np
import pytest

from twinfer.decoders import detect_decoder
from twinfer.decoders.base import DecodeParams
from twinfer.decoders.blazeface import BlazeFaceDecoder
from twinfer.decoders.classification import ClassificationDecoder
from twinfer.decoders.landmarks import LandmarksDecoder
from twinfer.decoders.segmentation import SegmentationDecoder
from twinfer.decoders.topologies import HAND_NAMES
from twinfer.pipeline import whole_input
from twinfer.signature import ModelSignature, TensorInfo

F32 = np.dtype(np.float32)
PARAMS = DecodeParams(score_threshold=0.5, iou_threshold=0.3, max_detections=10, top_k=3)


def _signature(*outputs: tuple[int, ...], size: int = 224, nchw: bool = False) -> ModelSignature:
    image = (1, 3, size, size) if nchw else (1, size, size, 3)
    return ModelSignature(inputs=(TensorInfo("image", image, F32),),
                          outputs=tuple(TensorInfo(f"out{i}", shape, F32) for i, shape in enumerate(outputs)))


@pytest.mark.parametrize("outputs, family", [
    (((1, 1000),), "classification"),
    (((1, 1, 1, 10),), "classification"),
    (((1, 21, 1, 1),), "classification"),
    (((1, 63), (1, 1), (1, 1), (1, 63)), "landmarks"),  # MediaPipe hand
    (((1, 1, 1, 1404), (1, 1, 1, 1)), "landmarks"),  # face mesh
    (((1, 195), (1, 1), (1, 256, 256, 1), (1, 64, 64, 39), (1, 117)), "landmarks"),  # pose
    (((1, 256, 256, 1),), "segmentation"),
    (((1, 21, 64, 64),), "segmentation"),
    (((1, 2016, 18), (1, 2016, 1)), "blazeface"),  # palm
])
def test_each_task_is_told_from_its_signature(outputs, family):
    assert detect_decoder(_signature(*outputs, size=192 if family == "blazeface" else 224)).name == family


def test_a_model_no_family_reads_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match="name them in twinfer.json"):
        detect_decoder(_signature((1, 7, 3)))
    with pytest.raises(ValueError, match="no keypoints decoder"):
        detect_decoder(_signature((1, 1000),), "keypoints")


def test_the_palm_and_pose_detectors_get_their_graphs_options():
    palm = BlazeFaceDecoder(_signature((1, 2016, 18), (1, 2016, 1), size=192), {})
    pose = BlazeFaceDecoder(_signature((1, 2254, 12), (1, 2254, 1), size=224), {})
    assert (palm.default_labels, palm.keypoint_count, pose.default_labels, pose.keypoint_count) == (
        ("palm",), 7, ("person",), 4)
    assert BlazeFaceDecoder.default_input(_signature((1, 2016, 18), (1, 2016, 1), size=192)).std == (255.0,) * 3
    assert pose.keypoint_names[0] == "hip_center" and palm.keypoint_names == ()


def test_hand_landmarks_come_back_in_picture_coordinates_with_handedness():
    decoder = LandmarksDecoder(_signature((1, 63), (1, 1), (1, 1), (1, 63)), {})
    points = np.zeros((21, 3), np.float32)
    points[:, 0], points[:, 1], points[:, 2] = np.arange(21) * 10, 112.0, 22.4
    geometry = whole_input(224, 224)
    (hand,) = decoder.decode([points.reshape(1, 63), np.array([[0.9]]), np.array([[0.2]]), np.zeros((1, 63))],
                             geometry, PARAMS)
    assert hand.score == pytest.approx(0.9) and (hand.label, hand.label_score) == ("left", pytest.approx(0.8))
    assert hand.points[20] == pytest.approx((200 / 224, 0.5))
    assert hand.depth[0] == pytest.approx(22.4 / 224 / 0.4)  # MediaPipe divides a hand's z by 0.4
    assert hand.visibility is None and len(HAND_NAMES) == 21
    absent = decoder.decode([points.reshape(1, 63), np.array([[0.4]]), np.array([[0.2]]), np.zeros((1, 63))],
                            geometry, PARAMS)
    assert absent == []


def test_classification_activations():
    decoder = ClassificationDecoder(_signature((1, 4)), {})
    ready = np.array([[0.1, 0.6, 0.3, 0.0]], np.float32)  # probabilities already: taken as they are
    classes = decoder.decode([ready], whole_input(224, 224), DecodeParams(0.0, 0.5, 10, 2))
    assert classes.class_ids.tolist() == [1, 2] and classes.scores == pytest.approx([0.6, 0.3])
    logits = decoder.decode([np.array([[0.0, 2.0, 1.0, 0.0]], np.float32)], whole_input(224, 224), PARAMS)
    assert logits.scores.sum() < 1 and logits.scores[0] == pytest.approx(np.exp(2) / (np.exp(2) + np.exp(1) + 2))
    with pytest.raises(ValueError, match="activation must be one of"):
        ClassificationDecoder(_signature((1, 4)), {"activation": "relu"})


def test_a_multi_class_map_takes_the_best_class_per_pixel_nchw():
    decoder = SegmentationDecoder(_signature((1, 3, 8, 8), size=8, nchw=True), {})
    scores = np.zeros((1, 3, 8, 8), np.float32)
    scores[0, 2, :, 4:] = 5.0  # right half: class 2
    mask = decoder.decode([scores], whole_input(8, 8), PARAMS)
    assert mask.num_classes == 3 and mask.class_map[:, 4:].min() == 2 and mask.class_map[:, :4].max() == 0
    assert mask.coverage().tolist() == [0.5, 0.0, 0.5]


def test_a_quantised_softmax_is_taken_as_the_probabilities_it_is():
    from twinfer.decoders import activation

    scale = 1 / 256  # a uint8 softmax output, dequantised: 1001 classes summing to 0.996
    probabilities = np.zeros(1001, np.float32)
    probabilities[7] = 255 * scale
    assert activation.apply(probabilities, "auto", "softmax", step=scale)[7] == pytest.approx(0.996, abs=1e-3)
    assert activation.apply(probabilities, "auto", "softmax")[7] < 0.01  # without the step: softmax again


@pytest.mark.parametrize("labels, classes, offset", [
    (["background", "cat", "dog"], 3, 0),  # TF-slim: class 0 is background, the file says so
    (["background", "cat", "dog"], 2, 1),  # a line more than classes: the background line is skipped
    (["cat", "dog"], 2, 0),
])
def test_a_classifiers_labels_line_up_with_its_class_count(labels, classes, offset):
    from twinfer.labels import label_offset

    assert label_offset(labels, model_counts_background=False, class_count=classes) == offset


@pytest.mark.parametrize("input_nchw, output, classes", [
    (False, (1, 128, 128, 150), 150),  # SegFormer ADE20K in NHWC: more classes than rows
    (True, (1, 150, 128, 128), 150),
])
def test_the_map_layout_follows_the_input_not_the_sizes(input_nchw, output, classes):
    decoder = SegmentationDecoder(_signature(output, size=512, nchw=input_nchw), {})
    assert decoder.channels == classes
    override = SegmentationDecoder(_signature((1, 150, 128, 128), size=512), {"layout": "NCHW"})
    assert override.channels == 150
