"""GET /openapi.json: the API description (``workers/openapi.json``) as this service runs it.

The file declares every protected operation as needing a bearer token. Without tokens
configured nothing needs one, so the served document drops those requirements: a client
generated from it must not send (or demand) credentials the service does not use.
"""
from __future__ import annotations

import json
from pathlib import Path

import falcon
import orjson

from workers.auth import METRICS_PATH
from workers.settings import AuthSettings

OPENAPI_FILE = Path(__file__).resolve().parent.parent / "openapi.json"


def describe(document: dict, auth: AuthSettings) -> dict:
    """The document for a service running with ``auth``; ``document`` is not changed."""
    served = json.loads(json.dumps(document))
    for path, operations in served["paths"].items():
        for operation in operations.values():
            if not isinstance(operation, dict) or not operation.get("security"):
                continue  # not an operation, or open anyway (the probes)
            if not auth.enabled:
                operation["security"] = []
            elif path == METRICS_PATH and not auth.metrics_public:
                operation["security"] = [{"bearerAuth": []}]
    return served


class OpenApiResource:
    def __init__(self, auth: AuthSettings, path: Path = OPENAPI_FILE) -> None:
        self._data = orjson.dumps(describe(json.loads(path.read_bytes()), auth))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = self._data
        resp.content_type = falcon.MEDIA_JSON
