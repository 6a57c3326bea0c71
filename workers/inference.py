"""The inference every transport shares: options, the active model, running it, metrics.

``POST /detect``, ``POST /predict`` and KServe v2's ``.../infer`` differ only in how a
request arrives and how its answer is written (``workers.resources``,
``workers.kserve.resources``); what is asked of the model, and what is checked and counted
on the way, is here, once: the request options and their bounds, which model serves (by
name, the default one without; a clear 404 naming the models there are, or 503 while one
loads), a chained model's detector, the documents (``workers.predictions``), the raw
tensor run, and the inference-time histogram.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import falcon
import numpy as np

from twinfer.chain import ChainError, predict_chained
from twinfer.chain_spec import MAX_CROPS_LIMIT
from twinfer.decode_budget import DecodeBudget
from twinfer.errors import (
    BadParameter,
    ChainMisconfigured,
    ChainUnavailable,
    ModelNotFound,
    NoModel,
    RequestError,
    WrongTask,
)
from twinfer.pipeline import DetectionResult, PredictOptions
from twinfer.spec import TOP_K_LIMIT
from workers import metrics
from workers.client_numbers import client_float, client_int
from workers.holder import ModelHolder, ServingModel
from workers.predictions import MASK_FORMATS, chain_result, detection_items, envelope, model_reference, task_result
from workers.settings import WorkerSettings

log = logging.getLogger("twinfer.worker")

MAX_DETECTIONS_LIMIT = 1000


@dataclass(frozen=True)
class PredictQuery:
    """What a /predict request may change: the task's options, the mask's encoding and,
    for a chained model, fewer crops than its cap."""

    predict: PredictOptions = PredictOptions()
    mask_format: str = "png"
    max_crops: int | None = None

    @staticmethod
    def parse(req: falcon.Request) -> "PredictQuery":
        detect = DetectOptions.parse(req.get_param("threshold"), req.get_param("max_detections"))
        top_k, max_crops, mask_format = req.get_param("top_k"), req.get_param("max_crops"), req.get_param("format")
        if mask_format is not None and mask_format not in MASK_FORMATS:
            raise BadParameter(f"format must be one of {', '.join(MASK_FORMATS)}, got {mask_format[:40]!r}")
        return PredictQuery(
            PredictOptions(detect.threshold, detect.max_detections,
                           None if top_k is None else client_int(top_k, "top_k", 1, TOP_K_LIMIT)),
            mask_format or "png",
            None if max_crops is None else client_int(max_crops, "max_crops", 1, MAX_CROPS_LIMIT),
        )


@dataclass(frozen=True)
class DetectOptions:
    """What a request may change about detection; None keeps the model's own setting."""

    threshold: float | None = None
    max_detections: int | None = None

    @staticmethod
    def parse(threshold: object, max_detections: object, prefix: str = "") -> "DetectOptions":
        """From a query string (text) or v2 parameters (JSON values); errors name the field
        as the client wrote it (``prefix``: ``parameters.`` for v2)."""
        return DetectOptions(
            None if threshold is None else client_float(threshold, f"{prefix}threshold", 0.0, 1.0),
            None if max_detections is None else client_int(
                max_detections, f"{prefix}max_detections", 1, MAX_DETECTIONS_LIMIT),
        )


def render(result: DetectionResult, serving: ServingModel) -> dict:
    """The detection document; boxes both normalised and in pixels of the original picture."""
    header, t = result.header, result.timings
    return {
        "model": model_reference(serving.manifest),
        "image": {"width": header.width, "height": header.height, "format": header.format},
        "detections": detection_items(result.detections, serving.model, header.width, header.height),
        "timing_ms": {
            "decode": round(t.decode_ms, 3),
            "inference": round(t.inference_ms, 3),
            "postprocess": round(t.postprocess_ms, 3),
            "total": round(t.total_ms, 3),
        },
    }


class InferenceHandler:
    def __init__(self, holder: ModelHolder, settings: WorkerSettings) -> None:
        self._holder = holder
        self._settings = settings
        self._decode_budget = DecodeBudget(settings.decode_memory, settings.decode_wait)  # twinfer/decode_budget.py

    @property
    def max_body_bytes(self) -> int:
        return self._settings.max_body_bytes

    def current(self, req: falcon.Request, name: str | None = None, version: str | None = None) -> ServingModel:
        """The model a request asks for (the default one without a name), checked against
        the version it asks for; the request's metrics are labelled with it."""
        return self._checked(req, self._holder.serving_now(name), name, version)

    @contextmanager
    def serving_chain(self, req: falcon.Request, name: str | None = None
                      ) -> Iterator[tuple[ServingModel, ServingModel | None]]:
        """Like ``serving``, with the detector a chained model names (``ModelHolder.serving_chain``)."""
        with self._holder.serving_chain(name) as (serving, detector):
            yield self._checked(req, serving, name, None), detector

    @contextmanager
    def serving(self, req: falcon.Request, name: str | None = None, version: str | None = None) -> Iterator[ServingModel]:
        """The model for one request, in one of the worker's inference slots; a swap
        meanwhile waits for it. Read the request body before: a slow upload holds no slot."""
        with self._holder.serving(name) as serving:
            yield self._checked(req, serving, name, version)

    def _checked(self, req: falcon.Request, serving: ServingModel | None, name: str | None,
                 version: str | None) -> ServingModel:
        if serving is None:
            if name is None or name in self._holder.missing():
                raise NoModel(f"{'no model' if name is None else repr(name)} loaded in this worker yet; retry shortly")
            served = sorted(self._holder.models)
            raise ModelNotFound(f"unknown model {name[:100]!r}; this server serves {served}")
        manifest = serving.manifest
        req.context.model = manifest.name
        if version is not None and version != manifest.version:
            raise ModelNotFound(
                f"model {manifest.name!r} has no version {version[:100]!r}; the active version is {manifest.version!r}")
        return serving

    def detect(self, serving: ServingModel, image: bytes, options: DetectOptions) -> dict:
        """Encoded picture -> the detection document (a detector's only: 409 otherwise)."""
        model = serving.model
        if not model.is_detector:
            raise WrongTask(f"model {serving.manifest.name!r} is a {model.task} model, not a detector: "
                            f"POST /predict?model={serving.manifest.name} answers it")
        result = serving.model.detect(image, self._settings.max_image_pixels, options.threshold, options.max_detections,
                                      self._decode_budget)
        _observe(serving, result.timings.inference_ms / 1e3)
        return render(result, serving)

    def predict(self, serving: ServingModel, detector: ServingModel | None, image: bytes,
                options: PredictQuery) -> dict:
        """Encoded picture -> the /predict envelope, for any task, chained or not."""
        model, manifest = serving.model, serving.manifest
        chain = model.spec.chain
        limit = self._settings.max_image_pixels
        if chain is None:
            prediction = model.predict(image, limit, options.predict, self._decode_budget)
            result = task_result(prediction.result, model, prediction.header, options.mask_format)
        else:
            if detector is None:
                raise ChainUnavailable(f"model {manifest.name!r} is fed by detector {chain.detector!r}, "
                                       "which this server does not serve now")
            try:
                prediction = predict_chained(model, detector.model, image, limit, options.predict,
                                             self._decode_budget, options.max_crops)
            except ChainError as exc:
                raise ChainMisconfigured(f"model {manifest.name!r}: {exc}") from None
            result = chain_result(prediction, model, detector.model, detector.manifest)
            _observe(detector, prediction.timings_ms["detector"] / 1e3)
        if chain is None or prediction.result:  # no crop: the model did not run
            _observe(serving, prediction.timings_ms["inference"] / 1e3)
        return envelope(model.task, manifest, prediction.header, result, prediction.timings_ms)

    def run(self, serving: ServingModel, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The model's raw tensors in and out (inputs already checked against its signature)."""
        started = time.perf_counter()
        try:
            arrays = serving.model.engine.run(feeds)
        except Exception as exc:  # the inputs passed every check; what the runtime still refuses is theirs
            log.warning("raw inference refused by the runtime: %s", exc)
            raise RequestError(f"the model could not run on these inputs: {type(exc).__name__}: {str(exc)[:400]}") from None
        _observe(serving, time.perf_counter() - started)
        return arrays


def _observe(serving: ServingModel, seconds: float) -> None:
    metrics.INFERENCE_SECONDS.labels(serving.manifest.name, serving.manifest.version).observe(seconds)
