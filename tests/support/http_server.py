"""A real HTTP file server on 127.0.0.1 for download tests, with fault knobs.

It behaves like Blob Storage where a downloader can tell: strong ETags that change on every
write, ``Range`` / ``If-Range`` (206, 416), ``Content-MD5`` (base64) on full reads, keep-alive.
The query string is ignored when finding a file, so SAS-style URLs work. Faults are set per
file and take effect on the next request::

    with FileServer({"/models/a.zip": data}) as server:
        server.faults("/models/a.zip").drop_after = len(data) // 2   # first response dies at 50%
        download(server.url("/models/a.zip?sig=SECRET"), part)
        assert server.bytes_sent == len(data)                       # nothing sent twice
        server.requests                                              # one RequestRecord each

Byte counts are body bytes handed to the kernel (``sendall``); what the client read may be
less when it went away first.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

_WRITE_PIECE = 16 * 1024


@dataclass
class Faults:
    """What a file's next responses do wrong. Body offsets count from the response's first byte."""

    # Served one per request before normal service: 500, or (503, {"Retry-After": "2"}); 200 = serve normally.
    statuses: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    drop_after: int | None = None  # close the connection after this many body bytes...
    drop_every: bool = False  # ...on every response (False: only the first response that gets there)
    stall_after: int | None = None  # pause once after this many body bytes...
    stall_seconds: float = 0.0  # ...for this long (longer than the client's read timeout = a stall)
    throttle_bps: int | None = None  # send at most this many body bytes per second
    replace_after: int | None = None  # once, after this many body bytes: swap in `replacement` (new
    replacement: bytes | None = None  # ETag) and drop the connection, like a blob overwritten mid-read
    honor_if_range: bool = True  # False: serve the range even when If-Range names an old ETag
    ignore_range: bool = False  # True: answer every Range with the whole blob (200), like a server without ranges
    range_at_end: int = 416  # Azurite answers 206 with an empty body to a range starting at the end
    chunked: bool = False  # Transfer-Encoding: chunked, no Content-Length (the client cannot know the size)


@dataclass
class RequestRecord:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    status: int = 0
    body_bytes: int = 0  # body bytes sent in this response


@dataclass
class _File:
    data: bytes
    etag: str
    faults: Faults
    dropped: bool = False
    stalled: bool = False


class FileServer:
    """Serves ``{path: bytes}`` on ``127.0.0.1:<free port>`` from a thread; use as a context manager."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self._files: dict[str, _File] = {}
        self._lock = threading.Lock()
        self._versions = itertools.count(1)
        self._closing = threading.Event()
        self.requests: list[RequestRecord] = []
        for path, data in (files or {}).items():
            self.put(path, data)
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._closing.set()  # wake stalled and throttled responses
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        """``http://127.0.0.1:<port><path>``; ``path`` may carry a query."""
        return f"http://127.0.0.1:{self.port}{path}"

    def put(self, path: str, data: bytes) -> str:
        """Create or overwrite a file (keeping its faults); returns the new ETag."""
        with self._lock:
            etag = f'"0x8D{next(self._versions):012X}"'
            current = self._files.get(path)
            if current is None:
                self._files[path] = _File(data, etag, Faults())
            else:  # faults and their once-only state carry over
                self._files[path] = _File(data, etag, current.faults, current.dropped, current.stalled)
            return etag

    def etag(self, path: str) -> str:
        return self._files[path].etag

    def faults(self, path: str) -> Faults:
        return self._files[path].faults

    def requests_for(self, path: str) -> list[RequestRecord]:
        return [r for r in self.requests if r.path == path]

    @property
    def bytes_sent(self) -> int:
        """Body bytes sent over all requests so far."""
        return sum(r.body_bytes for r in self.requests)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        """Clients that reset or time out are what these tests are about, not server errors."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Dropped(Exception):
    """The response was cut on purpose, or the client went away."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FileServer/1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # tests assert on logs; keep the server quiet

    def do_GET(self) -> None:
        self._serve_or_drop(body=True)

    def do_HEAD(self) -> None:
        self._serve_or_drop(body=False)

    def _serve_or_drop(self, body: bool) -> None:
        try:
            self._serve(body)
        except (_Dropped, OSError):  # cut on purpose, or the client went away
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _serve(self, body: bool) -> None:
        owner: FileServer = self.server.owner  # type: ignore[attr-defined]
        path, _, query = self.path.partition("?")
        record = RequestRecord(self.command, path, query, dict(self.headers.items()))
        with owner._lock:
            owner.requests.append(record)
            file = owner._files.get(path)
            scripted = file.faults.statuses.pop(0) if file and file.faults.statuses else 200
            data, etag = (file.data, file.etag) if file else (b"", "")
        status, extra = scripted if isinstance(scripted, tuple) else (scripted, {})
        if file is None or status != 200:
            status = 404 if file is None else status
            self._send_simple(record, status, extra, body)
            return
        start, end, status, headers = self._select_range(len(data), etag, file.faults)
        if status == 416:
            self._send_simple(record, 416, headers, body)
            return
        headers.update({"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"})
        if status == 200:
            headers["Content-MD5"] = base64.b64encode(hashlib.md5(data).digest()).decode()
        if file.faults.chunked:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers["Content-Length"] = str(end - start)
        record.status = status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self._send_body(owner, file, record, data[start:end])

    def _select_range(self, size: int, etag: str, faults: Faults) -> tuple[int, int, int, dict[str, str]]:
        """(start, end exclusive, status, headers) for the request's Range / If-Range."""
        value = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", (value or "").strip())
        if match is None or match.groups() == ("", "") or faults.ignore_range or (
            if_range not in (None, etag) and faults.honor_if_range
        ):
            return 0, size, 200, {}
        first, last = match.groups()
        if first == "":  # suffix range: the last N bytes
            start, end = max(0, size - int(last)), size
        else:
            start, end = int(first), min(size, int(last) + 1) if last else size
        if start >= size:
            if start == size and faults.range_at_end == 206:
                return size, size, 206, {"Content-Range": f"bytes {size}-{size}/{size}"}
            return 0, 0, 416, {"Content-Range": f"bytes */{size}"}
        return start, end, 206, {"Content-Range": f"bytes {start}-{end - 1}/{size}"}

    def _send_simple(self, record: RequestRecord, status: int, headers: dict[str, str], body: bool) -> None:
        payload = f"{status} {self.responses.get(status, ('',))[0]}\n".encode()
        record.status = status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self._write(record, payload, count=False)

    def _send_body(self, owner: FileServer, file: _File, record: RequestRecord, body: bytes) -> None:
        faults, sent, started = file.faults, 0, time.monotonic()
        piece = _WRITE_PIECE if not faults.throttle_bps else max(1, min(_WRITE_PIECE, faults.throttle_bps // 20))
        while True:
            if sent == faults.drop_after and (faults.drop_every or not file.dropped):
                file.dropped = True
                raise _Dropped()
            if sent == faults.stall_after and not file.stalled:
                file.stalled = True
                owner._closing.wait(faults.stall_seconds)
            if sent == faults.replace_after and faults.replacement is not None:
                owner.put(record.path, faults.replacement)
                faults.replacement = None
                raise _Dropped()
            if sent == len(body):
                break
            marks = [m for m in (faults.drop_after, faults.stall_after, faults.replace_after) if (m or 0) > sent]
            size = min([piece, len(body) - sent, *(m - sent for m in marks)])
            self._write(record, body[sent : sent + size], chunked=faults.chunked)
            sent += size
            if faults.throttle_bps:
                delay = started + sent / faults.throttle_bps - time.monotonic()
                if delay > 0 and owner._closing.wait(delay):
                    raise _Dropped()
        if faults.chunked:
            self._write(record, b"", chunked=True)

    def _write(self, record: RequestRecord, data: bytes, chunked: bool = False, count: bool = True) -> None:
        framed = b"%x\r\n%s\r\n" % (len(data), data) if chunked else data
        self.wfile.write(framed)
        if count:
            record.body_bytes += len(data)
