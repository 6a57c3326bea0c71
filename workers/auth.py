"""Bearer-token protection of the HTTP API (README "Security").

When TWINFER_API_TOKENS or TWINFER_API_TOKENS_FILE is set, every request needs
``Authorization: Bearer <token>`` except the probes (``/healthz``, ``/readyz``,
``/v2/health/live``, ``/v2/health/ready``) and, unless TWINFER_METRICS_PUBLIC=false,
``/metrics``. The check runs in ``process_request``, before routing: an unauthenticated
client learns nothing about which routes exist (every path answers 401, not 404/405),
and no body is read. ``RequestMetrics`` sits before this middleware in the app, so its
``process_response`` still records every 401 (route label ``unmatched``: the request was
refused before routing).

Tokens are kept only as SHA-256 digests: a candidate is hashed once and compared with
``hmac.compare_digest`` against every configured digest, without stopping at a match,
so neither the time taken nor an early exit tells which token (or how long a token)
matched. Tokens are never logged: error messages name the variable or file, not the value.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from pathlib import Path

import falcon

from twinfer.errors import RequestError
from workers import metrics
from workers.errors import answer_error
from workers.settings import AuthSettings, read_tokens_file

log = logging.getLogger("twinfer.worker")

PROBE_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
METRICS_PATH = "/metrics"
TOKENS_FILE_CHECK_SECONDS = 1.0
REALM = "twinfer"


class Unauthorized(RequestError):
    status = 401
    reason = "unauthorized"

    def __init__(self, message: str, challenge: str) -> None:
        super().__init__(message)
        self.challenge = challenge


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class TokenSet:
    """The accepted tokens (as digests): the environment's, plus the token file's, which is
    re-read at most every second when its inode, mtime or size changed (rotation without a
    restart: add the new token, move clients, remove the old one). A file that becomes
    unreadable or empty keeps the last good set, with a warning."""

    def __init__(self, settings: AuthSettings) -> None:
        self._static = tuple(_digest(t) for t in settings.tokens)
        self._file: Path | None = settings.tokens_file
        self._from_file: tuple[bytes, ...] = ()
        self._fingerprint: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()
        if self._file is not None:
            self._from_file = tuple(_digest(t) for t in read_tokens_file(self._file))
            self._fingerprint = self._stat()
            self._next_check = time.monotonic() + TOKENS_FILE_CHECK_SECONDS

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._file)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._file is None or now < self._next_check or not self._lock.acquire(blocking=False):
            return
        try:
            self._next_check = now + TOKENS_FILE_CHECK_SECONDS
            fingerprint = self._stat()
            if fingerprint == self._fingerprint:
                return
            self._fingerprint = fingerprint
            try:
                self._from_file = tuple(_digest(t) for t in read_tokens_file(self._file))
                log.info("worker %d reloaded the API tokens file (%d tokens)", os.getpid(), len(self._from_file))
            except ValueError as exc:  # the message names the file, never a token
                log.warning("keeping the previous API tokens: %s", exc)
        finally:
            self._lock.release()

    def __len__(self) -> int:
        return len(self._static) + len(self._from_file)

    def accepts(self, candidate: str) -> bool:
        self._refresh()
        digest = _digest(candidate)
        matched = False
        for known in self._static + self._from_file:
            matched |= hmac.compare_digest(digest, known)
        return matched


def bearer_token(header: str | None) -> str | None:
    """The credentials of ``Authorization: Bearer <token>`` (scheme case-insensitive)."""
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


class ApiAuth:
    """Falcon middleware: refuse a request without a configured bearer token (401)."""

    def __init__(self, settings: AuthSettings) -> None:
        self.tokens = TokenSet(settings)
        self.open_paths = PROBE_PATHS | ({METRICS_PATH} if settings.metrics_public else frozenset())

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path in self.open_paths:
            return
        token = bearer_token(req.get_header("Authorization"))
        if token is None:
            raise Unauthorized(
                "this API needs a bearer token: send 'Authorization: Bearer <token>'", f'Bearer realm="{REALM}"'
            )
        if not self.tokens.accepts(token):
            raise Unauthorized("the bearer token is not valid", f'Bearer realm="{REALM}", error="invalid_token"')


def handle_unauthorized(req: falcon.Request, resp: falcon.Response, exc: Unauthorized, params: dict) -> None:
    """Error handler: the usual error document, counted by reason, plus the challenge."""
    metrics.REQUEST_ERRORS.labels(exc.reason, "").inc()
    answer_error(resp, exc.status, exc.reason, exc.message)
    resp.set_header("WWW-Authenticate", exc.challenge)


def create_auth(settings: AuthSettings) -> ApiAuth | None:
    """The middleware when tokens are configured, else None (the API is open)."""
    return ApiAuth(settings) if settings.enabled else None
