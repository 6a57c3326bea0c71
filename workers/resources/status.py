"""Liveness, readiness, the active model, and the metrics scrape."""
from __future__ import annotations

from dataclasses import asdict

import falcon
import orjson

from workers import metrics
from workers.holder import ModelHolder


class HealthResource:
    """Process alive: answers even while a model loads."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = b'{"status":"ok"}'
        resp.content_type = falcon.MEDIA_JSON


class ReadyResource:
    """503 until this worker has a model loaded."""

    def __init__(self, holder: ModelHolder) -> None:
        self._holder = holder

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        serving = self._holder.current
        if serving is None:
            resp.status = falcon.HTTP_503
            resp.data = orjson.dumps({"status": "loading", "error": self._holder.last_error})
        else:
            resp.data = orjson.dumps({"status": "ready", "version": serving.manifest.version})
        resp.content_type = falcon.MEDIA_JSON


class ModelsResource:
    """What this worker serves: manifest entry, preprocessing, decoder, labels count."""

    def __init__(self, holder: ModelHolder) -> None:
        self._holder = holder

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        serving = self._holder.current
        worker = asdict(self._holder.state)
        if serving is None:
            resp.status = falcon.HTTP_503
            resp.data = orjson.dumps({"active": None, "worker": worker})
            resp.content_type = falcon.MEDIA_JSON
            return
        model, manifest = serving.model, serving.manifest
        spec = model.spec
        resp.data = orjson.dumps(
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
        resp.content_type = falcon.MEDIA_JSON


class MetricsResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = metrics.exposition()
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
