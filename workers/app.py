"""The Falcon WSGI app each gunicorn worker runs (``workers.app:create_app()``)."""
from __future__ import annotations

import logging

import falcon
import orjson

from workers import metrics
from workers.errors import RequestError
from workers.holder import ModelHolder
from workers.middleware import RequestMetrics
from workers.resources.detect import DetectResource
from workers.resources.openapi import OpenApiResource
from workers.resources.status import HealthResource, MetricsResource, ModelsResource, ReadyResource
from workers.settings import WorkerSettings

log = logging.getLogger("twinfer.worker")


def _request_error(req: falcon.Request, resp: falcon.Response, exc: RequestError, params: dict) -> None:
    metrics.REQUEST_ERRORS.labels(exc.reason).inc()
    resp.status = exc.status
    resp.data = orjson.dumps({"error": exc.message, "reason": exc.reason})
    resp.content_type = falcon.MEDIA_JSON


def _unexpected_error(req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict) -> None:
    """Last resort for a bug: log it, count it, answer JSON. Falcon's own HTTPErrors
    (404, 405) keep its JSON handler, which is more specific than this one."""
    log.exception("unhandled error on %s %s", req.method, req.path)
    metrics.REQUEST_ERRORS.labels("internal").inc()
    resp.status = falcon.HTTP_500
    resp.data = orjson.dumps({"error": "internal error", "reason": "internal"})
    resp.content_type = falcon.MEDIA_JSON


def create_app(settings: WorkerSettings | None = None) -> falcon.App:
    """Build the app and start loading the published model in the background."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings or WorkerSettings.from_env()
    holder = ModelHolder(settings.store, settings.engine)
    holder.start()
    metrics.WORKERS.set(1)
    app = falcon.App(middleware=[RequestMetrics()])
    app.req_options.strip_url_path_trailing_slash = True
    app.add_route("/detect", DetectResource(holder, settings))
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(holder))
    app.add_route("/models", ModelsResource(holder))
    app.add_route("/metrics", MetricsResource())
    app.add_route("/openapi.json", OpenApiResource())
    app.add_error_handler(Exception, _unexpected_error)
    app.add_error_handler(RequestError, _request_error)
    return app
