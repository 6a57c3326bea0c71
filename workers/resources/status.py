"""Liveness, readiness, the active model, and the metrics scrape."""
from __future__ import annotations

from dataclasses import asdict

import falcon

from workers import metrics
from workers.holder import ModelHolder


class HealthResource:
    """Process alive: answers even while a model loads."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class ReadyResource:
    """503 until this worker has a model loaded."""

    def __init__(self, holder: ModelHolder) -> None:
        self._holder = holder

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        serving = self._holder.current
        if serving is None:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "loading", "error": self._holder.last_error}
        else:
            resp.media = {"status": "ready", "version": serving.manifest.version}


class ModelsResource:
    """What this worker serves: manifest entry, preprocessing, decoder, labels count."""

    def __init__(self, holder: ModelHolder) -> None:
        self._holder = holder

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        serving = self._holder.current
        worker = asdict(self._holder.state)
        if serving is None:
            resp.status = falcon.HTTP_503
            resp.media = {"active": None, "worker": worker}
            return
        model, manifest = serving.model, serving.manifest
        spec = model.spec
        resp.media = (
            {
                "active": {
                    "name": manifest.name,
                    "version": manifest.version,
                    "generation": manifest.generation,
                    "format": manifest.format,
                    "decoder": spec.decoder,
                    "input": {
                        "width": model.input_width,
                        "height": model.input_height,
                        "layout": spec.input.layout,
                        "color": spec.input.color,
                        "resize": spec.input.resize,
                        "mean": spec.input.mean,
                        "std": spec.input.std,
                    },
                    "score_threshold": spec.score_threshold,
                    "iou_threshold": spec.iou_threshold,
                    "max_detections": spec.max_detections,
                    "labels": len(model.labels),
                    "shared_weights": getattr(model.engine, "shared_weights", False),
                },
                "worker": worker,
            }
        )


class MetricsResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = metrics.exposition()
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
