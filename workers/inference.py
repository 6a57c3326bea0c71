"""The inference every transport shares: options, the active model, running it, metrics.

``POST /detect`` and KServe v2's ``.../infer`` differ only in how a request arrives and
how its answer is written (``workers.resources.detect``, ``workers.kserve.resources``);
what is asked of the model, and what is checked and counted on the way, is here, once:
the detection options and their bounds, which model serves (by name, the default one
without; a clear 404 naming the models there are, or 503 while one loads),
the detection document, the raw tensor run, and the inference-time histogram.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import falcon
import numpy as np

from twinfer.decode_budget import DecodeBudget
from twinfer.errors import ModelNotFound, NoModel, RequestError
from twinfer.pipeline import DetectionResult
from workers import metrics
from workers.client_numbers import client_float, client_int
from workers.holder import ModelHolder, ServingModel
from workers.settings import WorkerSettings

log = logging.getLogger("twinfer.worker")

MAX_DETECTIONS_LIMIT = 1000


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
    model, manifest = serving.model, serving.manifest
    width, height = result.header.width, result.header.height
    detections = []
    for box, score, class_id in zip(
        result.detections.boxes.tolist(), result.detections.scores.tolist(), result.detections.class_ids.tolist()
    ):
        xmin, ymin, xmax, ymax = box
        detections.append(
            {
                "label": model.label(class_id),
                "class_id": class_id,
                "score": round(score, 5),
                "box": {"xmin": round(xmin, 5), "ymin": round(ymin, 5), "xmax": round(xmax, 5), "ymax": round(ymax, 5)},
                "box_px": {
                    "xmin": round(xmin * width, 1),
                    "ymin": round(ymin * height, 1),
                    "xmax": round(xmax * width, 1),
                    "ymax": round(ymax * height, 1),
                },
            }
        )
    t = result.timings
    return {
        "model": {"name": manifest.name, "version": manifest.version, "generation": manifest.generation},
        "image": {"width": width, "height": height, "format": result.header.format},
        "detections": detections,
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
        """Encoded picture -> the detection document."""
        result = serving.model.detect(image, self._settings.max_image_pixels, options.threshold, options.max_detections,
                                      self._decode_budget)
        _observe(serving, result.timings.inference_ms / 1e3)
        return render(result, serving)

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
