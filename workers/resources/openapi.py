"""GET /openapi.json: the API description (``workers/openapi.json``), read once at start."""
from __future__ import annotations

from pathlib import Path

import falcon

OPENAPI_FILE = Path(__file__).resolve().parent.parent / "openapi.json"


class OpenApiResource:
    def __init__(self, path: Path = OPENAPI_FILE) -> None:
        self._data = path.read_bytes()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = self._data
        resp.content_type = falcon.MEDIA_JSON
