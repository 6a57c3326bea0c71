"""Supervisor configuration from the environment (see README's config table)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workers.settings import env_int, worker_count

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL_DIR = PROJECT_ROOT / "models" / "default"


@dataclass(frozen=True)
class ServiceSettings:
    store: Path
    http_host: str
    http_port: int
    workers: int
    default_model_dir: Path
    default_model_name: str
    default_model_version: str

    @staticmethod
    def from_env() -> "ServiceSettings":
        return ServiceSettings(
            store=Path(os.environ.get("TWINFER_STORE", "var")).resolve(),
            http_host=os.environ.get("TWINFER_HTTP_HOST", "0.0.0.0"),
            http_port=env_int("TWINFER_HTTP_PORT", 8080, minimum=1),
            workers=worker_count(),
            default_model_dir=Path(os.environ.get("TWINFER_DEFAULT_MODEL_DIR", str(BUNDLED_MODEL_DIR))).resolve(),
            default_model_name=os.environ.get("TWINFER_DEFAULT_MODEL_NAME", "ssd-mobilenetv2-oidv4"),
            default_model_version=os.environ.get("TWINFER_DEFAULT_MODEL_VERSION", "1.0.0"),
        )

    @property
    def metrics_dir(self) -> Path:
        return self.store / "run" / "prometheus"
