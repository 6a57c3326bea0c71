"""What a bundle's model answers, checked the way a device will run it (``bundle``).

Validation proves the model loads, runs and its decoder reads its outputs (a warm-up);
this adds what an operator wants to see before a rollout: the task the device will serve
it as, its answer on a sample picture in a few words, and, for a chained model, that the
detector it names can feed it (``--detector``: that detector's bundle).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from twinfer.chain import ChainError, CropResult, check_detector, predict_chained
from twinfer.engines import EngineOptions
from twinfer.errors import RequestError
from twinfer.loader import load_model
from twinfer.pipeline import VisionModel
from twinfer.tasks import CLASSIFICATION, DETECTION, KEYPOINTS

_OPTIONS = EngineOptions(intra_op_threads=1, use_host_artifacts=False)
SAMPLE_MAX_PIXELS = 100_000_000
SHOWN = 3  # results named in a summary


class TaskCheckError(Exception):
    """The sample or the chain fails; the message says why."""


def _classes(model: VisionModel, result: Any) -> str:
    """The first labels and scores of a result with class ids and scores (classes, detections)."""
    return ", ".join(f"{model.label(c)} {s:.2f}" for c, s in zip(result.class_ids.tolist()[:SHOWN],
                                                                 result.scores.tolist()))


def summarize(model: VisionModel, result: Any) -> str:
    """One line for a whole-picture result of any task."""
    if model.task == DETECTION:
        shown = _classes(model, result)
        return f"{len(result)} detections" + (f": {shown}" if shown else "")
    if model.task == CLASSIFICATION:
        return f"top classes: {_classes(model, result) or 'none above the threshold'}"
    if model.task == KEYPOINTS:
        points = len(model.decoder.topology.names)
        return f"{len(result)} instances, {points} keypoints each" + (
            f" (presence {result[0].score:.2f})" if result else "")
    coverage = result.coverage()
    return "coverage: " + ", ".join(f"{model.label(c)} {coverage[c]:.2f}" for c in range(result.num_classes))


def _summarize_crops(model: VisionModel, detector: VisionModel, crops: list[CropResult]) -> str:
    parts = []
    for crop in crops[:SHOWN]:
        found = (_classes(model, crop.result) if model.task == CLASSIFICATION
                 else f"{len(crop.result)} instances")
        parts.append(f"{detector.label(crop.class_id)} {crop.score:.2f} -> {found}")
    return f"{len(crops)} crops" + (f": {'; '.join(parts)}" if parts else "")


def check_task(model_dir: Path, detector_dir: Path | None, sample: bytes | None) -> dict:
    """``task``, the ``chain`` and whether its detector was checked, and the ``sample``'s answer."""
    model = load_model(model_dir, "candidate", "0", _OPTIONS)
    chain = model.spec.chain
    report: dict = {"task": model.task}
    detector = None
    if chain is not None:
        report["chain"] = {"detector": chain.detector, "checked": detector_dir is not None}
        if detector_dir is not None:
            detector = load_model(detector_dir, chain.detector, "0", _OPTIONS)
            try:
                check_detector(chain, detector)
            except ChainError as exc:
                raise TaskCheckError(str(exc)) from None
    elif detector_dir is not None:
        raise TaskCheckError("--detector is for a chained model; this model's twinfer.json has no chain")
    if sample is not None:
        try:
            if detector is not None:
                prediction = predict_chained(model, detector, sample, SAMPLE_MAX_PIXELS)
                summary = _summarize_crops(model, detector, prediction.result)
            elif chain is not None:
                raise TaskCheckError("--sample on a chained model needs --detector: its crops come from the detector")
            else:
                prediction = model.predict(sample, SAMPLE_MAX_PIXELS)
                summary = summarize(model, prediction.result)
        except RequestError as exc:  # a picture the device would refuse with a 4xx
            raise TaskCheckError(f"the sample picture: {exc.message}") from None
        report["sample"] = {"summary": summary,
                            "timing_ms": {k: round(v, 1) for k, v in prediction.timings_ms.items()}}
    return report
