"""Worker-side configuration, read once from the environment (see README's config table)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from workers.engines.base import EngineOptions
from workers.store_layout import store_from_env


def env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def worker_count() -> int:
    return env_int("TWINFER_WORKERS", os.cpu_count() or 1, minimum=1)


def env_bool(name: str, default: bool, environ: Mapping[str, str] = os.environ) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def env_seconds(name: str, default: float, minimum: float = 0.0, environ: Mapping[str, str] = os.environ) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


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
        tokens = parse_token_list(environ.get("TWINFER_API_TOKENS", ""), "TWINFER_API_TOKENS")
        raw_file = environ.get("TWINFER_API_TOKENS_FILE", "").strip()
        tokens_file = Path(raw_file).resolve() if raw_file else None
        if tokens_file is not None:
            read_tokens_file(tokens_file)  # fail at start, not on the first request
        return AuthSettings(
            tokens=tokens,
            tokens_file=tokens_file,
            metrics_public=env_bool("TWINFER_METRICS_PUBLIC", True, environ),
        )


@dataclass(frozen=True)
class WorkerSettings:
    store: Path
    max_body_bytes: int
    max_image_pixels: int
    engine: EngineOptions
    auth: AuthSettings = AuthSettings()
    body_timeout: float = 10.0  # seconds for a request body to arrive; 0 = no deadline

    @staticmethod
    def from_env() -> "WorkerSettings":
        pool_default = EngineOptions.for_pool(worker_count())
        return WorkerSettings(
            store=store_from_env(),
            max_body_bytes=env_int("TWINFER_MAX_BODY_BYTES", 20 * 1024 * 1024, minimum=1),
            max_image_pixels=env_int("TWINFER_MAX_IMAGE_PIXELS", 50_000_000, minimum=1),
            engine=EngineOptions(
                intra_op_threads=env_int("TWINFER_INTRA_OP_THREADS", pool_default.intra_op_threads, minimum=1),
                inter_op_threads=env_int("TWINFER_INTER_OP_THREADS", 1, minimum=1),
            ),
            auth=AuthSettings.from_env(),
            body_timeout=env_seconds("TWINFER_BODY_TIMEOUT", 10.0),
        )


WORKER_CLASSES = ("gthread", "sync")


def check_server_protection(environ: Mapping[str, str] = os.environ) -> None:
    """Fail at start with a clear message (naming variables, never token values) for the
    settings gunicorn.conf.py and every worker would otherwise trip over one by one."""
    AuthSettings.from_env(environ)
    env_seconds("TWINFER_BODY_TIMEOUT", 10.0, environ=environ)
    env_seconds("TWINFER_HEADER_TIMEOUT", 10.0, environ=environ)
    env_seconds("TWINFER_KEEPALIVE_LINGER", 0.005, environ=environ)
    cert = environ.get("TWINFER_TLS_CERT", "").strip()
    key = environ.get("TWINFER_TLS_KEY", "").strip()
    if bool(cert) != bool(key):
        raise ValueError("TWINFER_TLS_CERT and TWINFER_TLS_KEY must be set together (or neither)")
    for name, path in (("TWINFER_TLS_CERT", cert), ("TWINFER_TLS_KEY", key)):
        if path and not os.access(path, os.R_OK):
            raise ValueError(f"{name}: {path} is not a readable file")
    worker_class = environ.get("TWINFER_WORKER_CLASS", "").strip()
    if worker_class and worker_class not in WORKER_CLASSES:
        raise ValueError(f"TWINFER_WORKER_CLASS must be one of {', '.join(WORKER_CLASSES)}, got {worker_class!r}")
    threads = environ.get("TWINFER_THREADS", "").strip()
    if threads and (not threads.isdigit() or int(threads) < 1):
        raise ValueError(f"TWINFER_THREADS must be an integer >= 1, got {threads!r}")
