"""``bundle`` checks every task the way the device runs it: the task, a sample picture's
answer, and a chained model against the bundle of the detector it names."""
from __future__ import annotations

import json

import pytest

from tests.support.cli import cli
from tests.support.paths import IMAGES, MODELS
from tests.support.task_models import POSE_CHAIN

pytestmark = pytest.mark.processes  # every test here starts processes

ASTRONAUT = str(IMAGES / "astronaut.png")


def _bundle(tmp_path, model: str, *extra: str, metadata: dict | None = None, name: str = "out"):
    args = [str(MODELS / model), "-o", str(tmp_path / f"{name}.zip"), *extra]
    if metadata is not None:
        meta = tmp_path / f"{name}.json"
        meta.write_text(json.dumps(metadata))
        args += ["--metadata", str(meta)]
    return cli("bundle", *args)


def test_a_segmentation_bundle_says_its_task_and_its_answer_on_the_sample(tmp_path):
    done = _bundle(tmp_path, "mp_selfie_segmentation.tflite", "--sample", ASTRONAUT, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["task"] == "segmentation" and result["decoder"] == "segmentation"
    summary = result["sample"]["summary"]
    assert summary.startswith("coverage: background 0.4") and "selfie 0.5" in summary
    human = _bundle(tmp_path, "mp_selfie_segmentation.tflite", "--sample", ASTRONAUT, name="human")
    fields = dict(line.split(None, 1) for line in human.stdout.splitlines() if line and not line.startswith(" "))
    assert fields["task"] == "segmentation" and fields["sample"].startswith(summary)


def test_a_chained_bundle_is_checked_against_its_detector_and_runs_the_chain(tmp_path):
    detector = _bundle(tmp_path, "mp_pose_detection.tflite", name="pose-detector")
    assert detector.returncode == 0, detector.stderr
    done = _bundle(tmp_path, "mp_pose_landmark_full.tflite", "--detector", str(tmp_path / "pose-detector.zip"),
                   "--sample", ASTRONAUT, "--json", metadata={"chain": POSE_CHAIN})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["task"] == "keypoints" and result["chain"] == {"detector": "pose-detector", "checked": True}
    assert result["sample"]["summary"] == "1 crops: person 0.81 -> 1 instances"
    unchecked = _bundle(tmp_path, "mp_pose_landmark_full.tflite", metadata={"chain": POSE_CHAIN}, name="unchecked")
    assert unchecked.returncode == 0 and "not checked: give --detector" in unchecked.stdout


@pytest.mark.parametrize("detector_model, extra, message", [
    ("mp_selfie_segmentation.tflite", [], "is a segmentation model, not a detector"),
    ("blazeface_short_range.tflite", [], None),  # 6 keypoints: it can feed a crop from keypoints 0 and 1
    (None, ["--sample", ASTRONAUT], "needs --detector"),
])
def test_a_chain_its_detector_cannot_feed_is_refused_and_nothing_written(tmp_path, detector_model, extra, message):
    args = list(extra)
    if detector_model is not None:
        made = _bundle(tmp_path, detector_model, name="detector")
        assert made.returncode == 0, made.stderr
        args += ["--detector", str(tmp_path / "detector.zip")]
    done = _bundle(tmp_path, "mp_pose_landmark_full.tflite", *args, metadata={"chain": POSE_CHAIN})
    if message is None:
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "out.zip").exists()
