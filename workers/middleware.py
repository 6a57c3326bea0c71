"""Request accounting for every route: latency by route/status/model, requests in flight."""
from __future__ import annotations

import os
import time

import falcon

from workers import metrics

# Label values a client chooses come from a closed set: a made-up method per request would
# otherwise add a time series each (the multiprocess files and every scrape grow with them).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
OTHER = "other"


def method_label(method: str) -> str:
    return method if method in METHODS else OTHER


def model_label(req: falcon.Request) -> str:
    """The model a request was served by (``workers.inference`` sets it once resolved, so
    the value comes from the manifest, never from the client); empty for other routes."""
    return getattr(req.context, "model", "")


class RequestMetrics:
    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        metrics.IN_FLIGHT.inc()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        started = getattr(req.context, "started", None)
        if started is None:
            return
        metrics.IN_FLIGHT.dec()
        route = req.uri_template or "unmatched"
        status = resp.status.split(" ", 1)[0] if isinstance(resp.status, str) else str(int(resp.status))
        metrics.REQUEST_SECONDS.labels(route, method_label(req.method), status, model_label(req)).observe(time.perf_counter() - started)
        resp.set_header("X-Twinfer-Worker", str(os.getpid()))
