"""Liveness, readiness, the models served, and the metrics scrape."""
from __future__ import annotations

from dataclasses import asdict

import falcon

from twinfer.chain_spec import chain_json
from twinfer.pipeline import VisionModel
from workers import metrics
from workers.holder import ModelHolder, ServingModel


class HealthResource:
    """Process alive: answers even while a model loads."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class ReadyResource:
    """503 until this worker has loaded every model of the manifest (some version of each)."""

    def __init__(self, holder: ModelHolder) -> None:
        self._holder = holder

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        missing = self._holder.missing()
        if self._holder.current is None or missing:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "loading", "loading": missing, "error": self._holder.last_error}
        else:
            resp.media = {"status": "ready", "version": self._holder.current.manifest.version,
                          "models": {name: s.manifest.version for name, s in sorted(self._holder.models.items())}}


def _task_details(model: VisionModel) -> dict:
    """What a client needs to read the task's answers: a landmark model's point names and
    skeleton edges (given once here, not in every answer), a chain's detector and crop."""
    details: dict = {}
    topology = getattr(model.decoder, "topology", None)
    if topology is not None:
        details["keypoints"] = {"topology": topology.name, "names": list(topology.names),
                                "edges": [list(edge) for edge in topology.edges]}
    chain = model.spec.chain
    if chain is not None:
        details["chain"] = chain_json(chain)
    return details


def model_document(serving: ServingModel, default: bool) -> dict:
    """One served model: manifest entry, task, preprocessing, decoder, labels count."""
    model, manifest = serving.model, serving.manifest
    spec = model.spec
    return {
        "name": manifest.name,
        "version": manifest.version,
        "generation": manifest.generation,
        "default": default,
        "format": manifest.format,
        "variant": manifest.variant,
        "task": spec.task,
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
        "top_k": spec.top_k,
        "labels": len(model.labels),
        "shared_weights": getattr(model.engine, "shared_weights", False),
        **_task_details(model),
    }


class ModelsResource:
    """What this worker serves: every model (the default one also as ``active``), and the
    worker's own state."""

    def __init__(self, holder: ModelHolder) -> None:
        self._holder = holder

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        holder = self._holder
        served, default = holder.models, holder.default
        models = [model_document(serving, name == default) for name, serving in sorted(served.items())]
        resp.media = {
            "default": default,
            "active": next((m for m in models if m["default"]), None),
            "models": models,
            "loading": holder.missing(),
            "worker": asdict(holder.state),
        }
        if not models:
            resp.status = falcon.HTTP_503


class MetricsResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = metrics.exposition()
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
