"""The peer benchmark's fairness claims (ops/bench/peers/common/detector.py).

``matched`` must do exactly twinfer's work (same boxes, scores and classes), and
``reference`` (the reference design's preprocessing) must find the same things, so that
the peers' figures compare servers answering the same question.
"""
from __future__ import annotations

import numpy as np
import pytest

from ops.bench import serving
from ops.bench.peers.common.detector import Detector
from tests.support.paths import DEFAULT_MODEL
from twinfer.engines import EngineOptions
from twinfer.loader import load_model


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in serving.make_pictures(tmp_path_factory.mktemp("pics")).items()}


@pytest.fixture(scope="module")
def twinfer_model():
    return load_model(DEFAULT_MODEL, "default", "1", EngineOptions(intra_op_threads=1, inter_op_threads=1))


def _as_arrays(document: dict) -> tuple[np.ndarray, np.ndarray, list[int]]:
    detections = document["detections"]
    boxes = np.array([[d["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] for d in detections], np.float32)
    scores = np.array([d["score"] for d in detections], np.float32)
    return boxes.reshape(-1, 4), scores, [d["class_id"] for d in detections]


@pytest.mark.parametrize("picture", list(serving.PICTURES))
def test_matched_pipeline_is_twinfers_request_path(pictures, twinfer_model, picture):
    data = pictures[picture]
    ours = twinfer_model.detect(data, 10**8).detections
    boxes, scores, classes = _as_arrays(Detector(DEFAULT_MODEL, pipeline="matched").detect(data))
    assert len(classes) > 0
    assert classes == ours.class_ids.tolist()
    np.testing.assert_allclose(scores, ours.scores, atol=1e-4)
    np.testing.assert_allclose(boxes, ours.boxes, atol=1e-4)


@pytest.mark.parametrize("picture", list(serving.PICTURES))
def test_reference_pipeline_finds_the_same_things(pictures, twinfer_model, picture):
    data = pictures[picture]
    ours = twinfer_model.detect(data, 10**8).detections
    boxes, scores, classes = _as_arrays(Detector(DEFAULT_MODEL, pipeline="reference").detect(data))
    assert classes[:1] == ours.class_ids.tolist()[:1]
    np.testing.assert_allclose(scores[0], ours.scores[0], atol=0.05)
    np.testing.assert_allclose(boxes[0], ours.boxes[0], atol=0.02)


def test_unknown_pipeline_is_refused():
    with pytest.raises(ValueError, match="pipeline"):
        Detector(DEFAULT_MODEL, pipeline="fastest")
