"""The verification set: how agreement is counted, what a malformed set is, and a real
model checked against planted references."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.verification import (
    SET_FILE,
    Found,
    Gate,
    VerificationError,
    VerificationSet,
    agreement,
    build_set,
    detections,
    read_set,
    verify,
    write_set,
)
from tests.support.paths import IMAGES, PROJECT_ROOT
from twinfer.engines import EngineOptions
from twinfer.loader import load_model

GATE = Gate(min_f1=0.95, iou=0.5, score_tolerance=0.05)
BOX = (0.1, 0.1, 0.5, 0.5)


def found(class_id: int, score: float, box=BOX) -> Found:
    return Found(class_id, score, box)


def test_identical_detections_agree_fully():
    pictures = [[found(1, 0.9), found(2, 0.6, (0.6, 0.6, 0.9, 0.9))], []]
    result = agreement(pictures, pictures, 0.5, GATE)
    assert (result.f1, result.matched, result.reference_detections, result.mean_score_diff) == (1.0, 2, 2, 0.0)


def test_a_score_moving_across_the_threshold_within_the_tolerance_is_noise_not_a_miss():
    result = agreement([[found(1, 0.52)]], [[found(1, 0.48)]], 0.5, GATE)
    assert result.f1 == 1.0 and result.candidate_detections == 0 and result.mean_score_diff == pytest.approx(0.04)


def test_a_lost_detection_a_new_one_another_class_and_a_moved_box_all_count():
    assert agreement([[found(1, 0.9)]], [[]], 0.5, GATE).recall == 0.0
    assert agreement([[]], [[found(1, 0.9)]], 0.5, GATE).precision == 0.0
    assert agreement([[found(1, 0.9)]], [[found(2, 0.9)]], 0.5, GATE).f1 == 0.0
    moved = agreement([[found(1, 0.9)]], [[found(1, 0.9, (0.4, 0.4, 0.8, 0.8))]], 0.5, GATE)
    assert moved.f1 == 0.0  # IoU 0.06


def test_counts_are_summed_over_pictures():
    reference = [[found(1, 0.9)], [found(1, 0.8)], [found(3, 0.7)], [found(4, 0.7)]]
    candidate = [[found(1, 0.88)], [found(1, 0.8)], [found(3, 0.72)], []]
    result = agreement(reference, candidate, 0.5, GATE)
    assert (result.matched, result.reference_detections, result.candidate_detections) == (3, 4, 3)
    assert result.f1 == pytest.approx(2 * 1.0 * 0.75 / 1.75) and not result.passes(GATE)
    assert result.max_score_diff == pytest.approx(0.02)


def test_each_candidate_matches_one_reference_detection_at_most():
    result = agreement([[found(1, 0.9), found(1, 0.8)]], [[found(1, 0.9)]], 0.5, GATE)
    assert result.matched == 1 and result.recall == 0.5


@pytest.fixture(scope="module")
def demo_model():
    return load_model(PROJECT_ROOT / "models" / "default", "demo", "1", EngineOptions(use_host_artifacts=False))


def _set_dir(tmp_path: Path, demo_model, plant=None) -> Path:
    """A verification set of two real photos; ``plant`` rewrites the reference detections."""
    pictures = [(IMAGES / "chelsea.png").read_bytes(), (IMAGES / "astronaut.png").read_bytes()]
    verification, files = build_set(demo_model, pictures, 2, GATE, {"model": "model.onnx", "runtime": "ort test"})
    if plant is not None:
        verification = VerificationSet(tuple((name, plant(d)) for name, d in verification.pictures),
                                       verification.score_threshold, verification.gate, verification.reference)
    write_set(tmp_path, verification, files)
    return tmp_path


def test_a_model_agrees_with_its_own_verification_set(tmp_path, demo_model):
    directory = _set_dir(tmp_path, demo_model)
    stored = read_set(directory)
    assert [name for name, _ in stored.pictures] == ["twinfer-verification-1.jpg", "twinfer-verification-2.jpg"]
    assert {d.class_id for _, ds in stored.pictures for d in ds if d.score >= 0.5} == {4, 8}  # Person, Cat
    for name, _ in stored.pictures:  # downscaled to cover the 300x300 input, never below it
        image = cv2.imdecode(np.frombuffer((directory / name).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        assert min(image.shape[:2]) == 300
    assert verify(demo_model, directory).f1 == 1.0


def test_a_model_that_disagrees_is_refused_with_the_figures(tmp_path, demo_model):
    directory = _set_dir(tmp_path, demo_model, plant=lambda ds: tuple(Found(d.class_id + 1, d.score, d.box) for d in ds))
    with pytest.raises(VerificationError, match=r"at F1 0\.000, below the bundle's gate of 0\.950") as caught:
        verify(demo_model, directory)
    assert caught.value.agreement.reference_detections == 2 and "model.onnx on ort test" in str(caught.value)


def test_a_set_without_detections_is_refused_when_built(demo_model):
    _, black = cv2.imencode(".png", np.zeros((300, 300, 3), np.uint8))
    with pytest.raises(VerificationError, match="detects nothing"):
        build_set(demo_model, [black.tobytes()], 4, GATE, {})


@pytest.mark.parametrize(("document", "message"), [
    ("not json", "not valid JSON"),
    ({"format": 9}, "format 9"),
    ({"format": 1, "score_threshold": 0.5, "gate": {"min_f1": 2}, "pictures": []}, "min_f1 must be"),
    ({"format": 1, "score_threshold": 0.5, "pictures": [{"file": "../x.jpg"}]}, "must start with"),
    ({"format": 1, "score_threshold": 0.5, "pictures": [{"file": "twinfer-verification-9.jpg"}]}, "does not hold"),
    ({"format": 1, "score_threshold": 0.5, "pictures": []}, "names no picture"),
])
def test_a_malformed_set_says_what_is_wrong(tmp_path, document, message):
    (tmp_path / SET_FILE).write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(VerificationError, match=message):
        read_set(tmp_path)


def test_no_set_is_no_check(tmp_path, demo_model):
    assert read_set(tmp_path) is None and verify(demo_model, tmp_path) is None


def test_detections_reach_down_to_the_tolerance_band(demo_model):
    cat = detections(demo_model, (IMAGES / "chelsea.png").read_bytes(), 0.88, GATE)  # the cat scores ~0.85
    assert [d.class_id for d in cat] == [8] and 0.83 <= cat[0].score < 0.88
