"""The IoT Edge workload API on a unix socket, as much of it as ``create_from_edge_environment`` uses:

* ``GET /trust-bundle?api-version=...`` -> ``{"certificate": "<CA PEM>"}`` (the root edgeHub's
  server certificate chains to);
* ``POST /modules/<module>/genid/<gid>/sign?api-version=...`` with
  ``{"keyId": "primary", "algo": "HMACSHA256", "data": <base64>}`` -> ``{"digest": <base64 HMAC>}``
  (the SAS token signature; the module never sees the key).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

API_VERSION = "2019-01-30"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    api: "WorkloadApi"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def address_string(self) -> str:  # a unix peer has no host to print
        return "workload-client"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: dict | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        api = self.server.api
        if urlsplit(self.path).path == "/trust-bundle":
            api.record(self.command, self.path)
            self._reply(200, {"certificate": api.ca_pem})
        else:
            self._reply(404, {"message": "not found"})

    def do_POST(self) -> None:
        api = self.server.api
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        api.record(self.command, self.path)
        if path != f"/modules/{api.module_id}/genid/{api.generation_id}/sign":
            self._reply(404, {"message": "unknown module or generation"})
        elif request.get("keyId") != "primary" or request.get("algo") != "HMACSHA256":
            self._reply(400, {"message": "unsupported key or algorithm"})
        else:
            self._reply(200, {"digest": api.sign(base64.b64decode(request["data"]))})


class WorkloadApi:
    def __init__(self, socket_path: Path, ca_pem: str, module_id: str, generation_id: str = "6380000001") -> None:
        self.socket_path = socket_path
        self.ca_pem = ca_pem
        self.module_id = module_id
        self.generation_id = generation_id
        self.key = base64.b64encode(hashlib.sha256(b"twinfer workload test key").digest())
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "WorkloadApi":
        self.socket_path.unlink(missing_ok=True)
        self._server = _Server(str(self.socket_path), _Handler)
        self._server.api = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="workload-api", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        self.socket_path.unlink(missing_ok=True)

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def sign(self, data: bytes) -> str:
        return base64.b64encode(hmac.new(base64.b64decode(self.key), data, hashlib.sha256).digest()).decode()

    def env(self, hub_hostname: str, gateway_hostname: str, device_id: str) -> dict[str, str]:
        """The variables the IoT Edge runtime gives a module (the SDK reads them from os.environ)."""
        return {
            "IOTEDGE_WORKLOADURI": f"unix://{self.socket_path}",
            "IOTEDGE_IOTHUBHOSTNAME": hub_hostname,
            "IOTEDGE_GATEWAYHOSTNAME": gateway_hostname,
            "IOTEDGE_DEVICEID": device_id,
            "IOTEDGE_MODULEID": self.module_id,
            "IOTEDGE_MODULEGENERATIONID": self.generation_id,
            "IOTEDGE_APIVERSION": API_VERSION,
            "IOTEDGE_AUTHSCHEME": "sasToken",
        }
