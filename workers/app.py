"""The Falcon WSGI app each gunicorn worker runs (``workers.app:create_app()``)."""
from __future__ import annotations

import logging

import falcon
import orjson

from twinfer.errors import RequestError
from twinfer.settings_table import read
from workers import inference_slots, metrics
from workers.auth import Unauthorized, create_auth, handle_unauthorized
from workers.errors import answer_error, serialize_http_error
from workers.holder import ModelHolder
from workers.inference import InferenceHandler
from workers.inference_slots import InferenceSlots, slots_per_worker
from workers.kserve import resources as kserve
from workers.limits import create_body_deadline
from workers.middleware import RequestMetrics, model_label
from workers.resources.detect import DetectResource
from workers.resources.openapi import OpenApiResource
from workers.resources.predict import PredictResource
from workers.resources.status import HealthResource, MetricsResource, ModelsResource, ReadyResource
from workers.settings import WorkerSettings

log = logging.getLogger("twinfer.worker")


def _request_error(req: falcon.Request, resp: falcon.Response, exc: RequestError, params: dict) -> None:
    metrics.REQUEST_ERRORS.labels(exc.reason, model_label(req)).inc()
    answer_error(resp, exc.status, exc.reason, exc.message)
    if exc.retry_after is not None:
        resp.set_header("Retry-After", str(exc.retry_after))


def _unexpected_error(req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict) -> None:
    """Last resort for a bug: log it, count it, answer JSON. Falcon's own HTTPErrors
    (404, 405) keep their own handler, which is more specific than this one, and are
    written by ``serialize_http_error``."""
    log.exception("unhandled error on %s %s", req.method, req.path)
    metrics.REQUEST_ERRORS.labels("internal", model_label(req)).inc()
    answer_error(resp, falcon.HTTP_500, "internal", "internal error")


def _with_head(resource: object) -> object:
    """HTTP allows HEAD wherever GET is (RFC 9110 9.3.2): the GET responder answers it, and
    Falcon leaves the body out."""
    if hasattr(resource, "on_get") and not hasattr(resource, "on_head"):
        resource.on_head = resource.on_get
    return resource


def create_app(settings: WorkerSettings | None = None) -> falcon.App:
    """Build the app; the published models are loaded before it returns (``ModelHolder.start``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings or WorkerSettings.from_env()
    slots = inference_slots.install(InferenceSlots(slots_per_worker(read("TWINFER_WORKERS"), settings.engine.intra_op_threads)))
    holder = ModelHolder(settings.store, settings.engine, slots)
    metrics.WORKERS.set(1)  # live from now, before its models' series appear: a scrape never sees them without it
    holder.start()
    # RequestMetrics first: its process_response also records the 401s and 408s of the
    # protection layers after it (README "Security").
    protection = [create_auth(settings.auth), create_body_deadline(settings.body_timeout)]
    app = falcon.App(middleware=[RequestMetrics(), *[layer for layer in protection if layer is not None]])
    app.req_options.strip_url_path_trailing_slash = True
    json = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)  # resp.media, in one place
    app.resp_options.media_handlers.update({falcon.MEDIA_JSON: json})
    app.req_options.media_handlers.update({falcon.MEDIA_JSON: json})
    inference = InferenceHandler(holder, settings)  # what /detect, /predict and /v2 infer share
    app.add_route("/detect", _with_head(DetectResource(inference)))
    app.add_route("/predict", _with_head(PredictResource(inference)))
    app.add_route("/healthz", _with_head(HealthResource()))
    app.add_route("/readyz", _with_head(ReadyResource(holder)))
    app.add_route("/models", _with_head(ModelsResource(holder)))
    app.add_route("/metrics", _with_head(MetricsResource()))
    app.add_route("/openapi.json", _with_head(OpenApiResource(settings.auth)))
    # KServe v2 / Open Inference Protocol (workers/kserve); other /v2 paths get a v2-format 404.
    app.add_route("/v2", _with_head(kserve.ServerMetadataResource()))
    app.add_route("/v2/health/live", _with_head(kserve.ServerLiveResource()))
    app.add_route("/v2/health/ready", _with_head(kserve.ServerReadyResource(holder)))
    app.add_route("/v2/repository/index", kserve.RepositoryIndexResource(holder))
    metadata, ready, infer = (kserve.ModelMetadataResource(inference), kserve.ModelReadyResource(inference),
                              kserve.InferResource(inference))
    for model in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_route(model, _with_head(metadata))
        app.add_route(model + "/ready", _with_head(ready))
        app.add_route(model + "/infer", _with_head(infer))
    app.add_sink(kserve.not_found_sink, r"/v2(/|$)")
    app.add_error_handler(Exception, _unexpected_error)
    app.add_error_handler(RequestError, _request_error)
    app.add_error_handler(Unauthorized, handle_unauthorized)
    app.set_error_serializer(serialize_http_error)
    return app
