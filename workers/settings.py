"""Worker-side configuration, read once from the environment (see README's config table)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workers.engines.base import EngineOptions


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


@dataclass(frozen=True)
class WorkerSettings:
    store: Path
    max_body_bytes: int
    max_image_pixels: int
    engine: EngineOptions

    @staticmethod
    def from_env() -> "WorkerSettings":
        pool_default = EngineOptions.for_pool(worker_count())
        return WorkerSettings(
            store=Path(os.environ.get("TWINFER_STORE", "var")).resolve(),
            max_body_bytes=env_int("TWINFER_MAX_BODY_BYTES", 20 * 1024 * 1024, minimum=1),
            max_image_pixels=env_int("TWINFER_MAX_IMAGE_PIXELS", 50_000_000, minimum=1),
            engine=EngineOptions(
                intra_op_threads=env_int("TWINFER_INTRA_OP_THREADS", pool_default.intra_op_threads, minimum=1),
                inter_op_threads=env_int("TWINFER_INTER_OP_THREADS", 1, minimum=1),
            ),
        )
