"""POST /detect: image in, labelled boxes out."""
from __future__ import annotations

import falcon
import orjson

from workers import metrics
from workers.errors import BadParameter, NoModel
from workers.holder import ModelHolder
from workers.pipeline import DetectionResult
from workers.resources.body import image_bytes
from workers.settings import WorkerSettings

MAX_DETECTIONS_LIMIT = 1000


def _threshold(req: falcon.Request) -> float | None:
    raw = req.get_param("threshold")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadParameter(f"threshold must be a number between 0 and 1, got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise BadParameter(f"threshold must be between 0 and 1, got {value}")
    return value


def _max_detections(req: falcon.Request) -> int | None:
    raw = req.get_param("max_detections")
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_DETECTIONS_LIMIT:
        raise BadParameter(f"max_detections must be an integer 1..{MAX_DETECTIONS_LIMIT}, got {raw!r}")
    return int(raw)


def render(result: DetectionResult, serving) -> dict:
    """The response document; boxes both normalised and in pixels of the original picture."""
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


class DetectResource:
    def __init__(self, holder: ModelHolder, settings: WorkerSettings) -> None:
        self._holder = holder
        self._settings = settings

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        threshold, max_detections = _threshold(req), _max_detections(req)
        data = image_bytes(req, self._settings.max_body_bytes)
        with self._holder.serving() as serving:  # a swap meanwhile waits for this request
            if serving is None:
                raise NoModel("no model loaded in this worker yet; retry shortly")
            result = serving.model.detect(data, self._settings.max_image_pixels, threshold, max_detections)
        metrics.INFERENCE_SECONDS.labels(serving.manifest.name, serving.manifest.version).observe(
            result.timings.inference_ms / 1e3
        )
        resp.data = orjson.dumps(render(result, serving))
        resp.content_type = falcon.MEDIA_JSON
        resp.set_header("X-Model-Version", serving.manifest.version)
