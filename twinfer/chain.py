"""A detector feeding a second model: crops of its boxes, one inference per crop.

Why here and not in the HTTP layer: the supervisor's validation, the benchmark and the
workers run the same chain. The picture is decoded once, as large as the crops need (at full
size unless a JPEG is over ``CROP_DETAIL`` times the second model's input; the detector
gets its own downscaled copy); the detector's boxes, best first and
filtered by the chain's labels and score, become rotated crops (``twinfer.crops``), each
run through the second model and mapped back to the picture. Both models are the ones the
caller holds for this one request, so a swap of either between requests never mixes a
detector's boxes with another version's crops.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from twinfer import imaging
from twinfer.chain_spec import ChainSpec
from twinfer.crops import CropPlacement, Roi, cut, roi_for
from twinfer.decode_budget import DecodeBudget, decode_bytes
from twinfer.decoders.base import Detections
from twinfer.pipeline import Prediction, PredictOptions, VisionModel
from twinfer.tasks import DETECTION


class ChainError(ValueError):
    """The named detector cannot feed this model (not a detector, too few keypoints)."""


@dataclass(frozen=True)
class CropResult:
    """One detection and what the second model found in its crop."""

    box: np.ndarray  # xmin, ymin, xmax, ymax normalised to the picture
    score: float
    class_id: int
    roi: Roi
    result: Any  # the second model's result on the crop (Classes, or a list of Landmarks)


def check_detector(chain: ChainSpec, detector: VisionModel) -> None:
    """Raise ``ChainError`` unless ``detector`` can feed ``chain``."""
    if detector.task != DETECTION:
        raise ChainError(f"chain.detector {chain.detector!r} is a {detector.task} model, not a detector")
    needed = chain.keypoints_needed()
    have = getattr(detector.decoder, "keypoint_count", 0)
    if needed > have:
        raise ChainError(f"chain.crop uses keypoint {needed - 1} but detector {chain.detector!r} "
                         f"({detector.spec.decoder}) gives {have} keypoints per box")
    if chain.labels is not None:
        unknown = [label for label in chain.labels if label not in detector.labels]
        if unknown:
            raise ChainError(f"chain.labels {unknown} are not labels of detector {chain.detector!r}")


# A crop as small as 1/CROP_DETAIL of the picture's side still gets its model's full
# resolution: a larger JPEG is decoded that much smaller (libjpeg's 1/2, 1/4, 1/8 scales).
CROP_DETAIL = 4


def _detail_needed(model: VisionModel, detector: VisionModel) -> tuple[int, int]:
    """(width, height) of the smallest decode that serves both stages."""
    return (max(detector.input_width, CROP_DETAIL * model.input_width),
            max(detector.input_height, CROP_DETAIL * model.input_height))


def _chosen(detections: Detections, detector: VisionModel, chain: ChainSpec, limit: int) -> list[int]:
    """Indices of the detections to crop, best first, at most ``limit``."""
    picked = []
    for index, class_id in enumerate(detections.class_ids.tolist()):
        if chain.labels is None or detector.label(class_id) in chain.labels:
            picked.append(index)
            if len(picked) == limit:
                break
    return picked


def predict_chained(
    model: VisionModel, detector: VisionModel, data: bytes, max_pixels: int,
    options: PredictOptions = PredictOptions(), budget: DecodeBudget | None = None, max_crops: int | None = None,
) -> Prediction:
    """Image bytes -> one ``CropResult`` per chosen detection, timed by stage: ``detector``
    (its resize, inference and decoding), ``crop`` and ``inference`` (the second model,
    summed over the crops)."""
    chain = model.spec.chain
    assert chain is not None, "predict_chained is for a model with a chain"
    check_detector(chain, detector)
    started = time.perf_counter()
    header = imaging.read_header(data, max_pixels)
    reduction = imaging.jpeg_reduction(header, *_detail_needed(model, detector))
    cost = decode_bytes(header.format, header.width, header.height, reduction)
    what = f"this {header.width}x{header.height} {header.format}"
    with budget.reserve(cost, what) if budget is not None else contextlib.nullcontext():
        picture = imaging.decode(data, header, reduction, detector.spec.input.color)
        decoded = time.perf_counter()
        pixels, geometry = imaging.to_input(picture, header, detector.spec.input, detector.input_width,
                                            detector.input_height)
        detections = detector.infer(pixels, geometry, detector.params(chain.min_score, None))
        chosen = _chosen(detections, detector, chain, min(chain.max_crops, max_crops or chain.max_crops))
        located = time.perf_counter()
        params = model.params(options.threshold, options.max_detections, options.top_k)
        crops: list[CropResult] = []
        crop_ms = inference_ms = 0.0
        for index in chosen:
            t0 = time.perf_counter()
            keypoints = None if detections.keypoints is None else detections.keypoints[index]
            box = (detections.unclipped_boxes if detections.unclipped_boxes is not None else detections.boxes)[index]
            roi = roi_for(box, keypoints, chain.crop, header.width, header.height)
            crop = cut(picture.pixels, roi, header.width, model.input_width, model.input_height)
            if picture.color != model.spec.input.color:
                cv2.cvtColor(crop, cv2.COLOR_BGR2RGB, dst=crop)
            t1 = time.perf_counter()
            result = model.infer(crop, CropPlacement(roi, header.width, header.height), params)
            crop_ms, inference_ms = crop_ms + (t1 - t0) * 1e3, inference_ms + (time.perf_counter() - t1) * 1e3
            crops.append(CropResult(detections.boxes[index], float(detections.scores[index]),
                                    int(detections.class_ids[index]), roi, result))
        del picture
    finished = time.perf_counter()
    return Prediction(header, crops, {
        "decode": (decoded - started) * 1e3,
        "detector": (located - decoded) * 1e3,
        "crop": crop_ms,
        "inference": inference_ms,  # the second model, all crops, its decoding included
        "total": (finished - started) * 1e3,
    })
