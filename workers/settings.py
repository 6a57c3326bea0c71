"""Worker-side configuration, read once from the environment: the variables, their defaults and
bounds are declared in ``twinfer.settings_table`` (README "Configuration")."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from twinfer.engines.base import EngineOptions
from twinfer.settings_table import read
from twinfer.store_layout import store_from_env

# --- API protection (workers/auth.py, workers/limits.py; README "Security") ---------------

MIN_TOKEN_LENGTH = 16
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 b64token


def check_token(token: str, origin: str) -> str:
    """A usable bearer token, or ValueError naming where it came from (never the token)."""
    if not _TOKEN_CHARS.fullmatch(token):
        raise ValueError(f"a token in {origin} has characters a bearer token cannot carry (RFC 6750 b64token)")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"a token in {origin} is shorter than {MIN_TOKEN_LENGTH} characters")
    return token


def parse_token_list(raw: str, origin: str) -> tuple[str, ...]:
    """Comma-separated tokens (TWINFER_API_TOKENS); blanks between commas are ignored."""
    return tuple(check_token(t.strip(), origin) for t in raw.split(",") if t.strip())


def read_tokens_file(path: Path) -> tuple[str, ...]:
    """One token per line; blank lines and lines starting with ``#`` are skipped. An empty
    file is an error: an operator who configured a token file wants the API closed."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"TWINFER_API_TOKENS_FILE {path}: {exc.strerror or exc}") from None
    tokens = tuple(
        check_token(line.strip(), f"TWINFER_API_TOKENS_FILE {path}")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    if not tokens:
        raise ValueError(f"TWINFER_API_TOKENS_FILE {path} holds no token")
    return tokens


@dataclass(frozen=True)
class AuthSettings:
    """Bearer-token protection. ``tokens`` come from TWINFER_API_TOKENS and are kept out of
    ``repr`` (settings get logged); ``tokens_file`` is re-read when it changes (rotation)."""

    tokens: tuple[str, ...] = field(default=(), repr=False)
    tokens_file: Path | None = None
    metrics_public: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.tokens) or self.tokens_file is not None

    @staticmethod
    def from_env(environ: Mapping[str, str] = os.environ) -> "AuthSettings":
        tokens = parse_token_list(read("TWINFER_API_TOKENS", environ) or "", "TWINFER_API_TOKENS")
        tokens_file = read("TWINFER_API_TOKENS_FILE", environ)
        if tokens_file is not None:
            read_tokens_file(tokens_file)  # fail at start, not on the first request
        return AuthSettings(
            tokens=tokens,
            tokens_file=tokens_file,
            metrics_public=read("TWINFER_METRICS_PUBLIC", environ),
        )


@dataclass(frozen=True)
class WorkerSettings:
    store: Path
    max_body_bytes: int
    max_image_pixels: int
    engine: EngineOptions
    auth: AuthSettings = AuthSettings()
    body_timeout: float = 10.0  # seconds for a request body to arrive; 0 = no deadline
    decode_memory: int = 128 * 1024 * 1024  # bytes the worker's decodes hold at once
    decode_wait: float = 10.0  # seconds a picture waits for room in them

    @staticmethod
    def from_env() -> "WorkerSettings":
        return WorkerSettings(
            store=store_from_env(),
            max_body_bytes=read("TWINFER_MAX_BODY_BYTES"),
            max_image_pixels=read("TWINFER_MAX_IMAGE_PIXELS"),
            engine=EngineOptions(
                intra_op_threads=read("TWINFER_INTRA_OP_THREADS"), inter_op_threads=read("TWINFER_INTER_OP_THREADS"),
            ),
            auth=AuthSettings.from_env(),
            body_timeout=read("TWINFER_BODY_TIMEOUT"),
            decode_memory=read("TWINFER_DECODE_MEMORY"),
            decode_wait=read("TWINFER_DECODE_WAIT"),
        )


def check_server_protection(environ: Mapping[str, str] = os.environ) -> None:
    """Fail at start with a clear message (naming variables, never token values) for the
    settings gunicorn's config and every worker would otherwise trip over one by one."""
    AuthSettings.from_env(environ)
    for name in ("TWINFER_BODY_TIMEOUT", "TWINFER_DECODE_WAIT", "TWINFER_HEADER_TIMEOUT", "TWINFER_KEEPALIVE_LINGER",
                 "TWINFER_WORKER_CLASS", "TWINFER_THREADS", "TWINFER_WORKER_TIMEOUT", "TWINFER_LOG_LEVEL"):
        read(name, environ)
    cert, key = read("TWINFER_TLS_CERT", environ), read("TWINFER_TLS_KEY", environ)
    if (cert is None) != (key is None):
        raise ValueError("TWINFER_TLS_CERT and TWINFER_TLS_KEY must be set together (or neither)")
    for name, path in (("TWINFER_TLS_CERT", cert), ("TWINFER_TLS_KEY", key)):
        if path is not None and not os.access(path, os.R_OK):
            raise ValueError(f"{name}: {path} is not a readable file")
