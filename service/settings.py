"""Supervisor configuration from the environment (see README's config table)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from service.update.schedule import DownloadWindow, parse_windows_env
from workers.settings import env_bool, env_int, env_seconds, worker_count
from workers.store_layout import StoreLayout, store_from_env

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL_DIR = PROJECT_ROOT / "models" / "default"


def _range_bytes() -> int:
    value = env_int("TWINFER_DOWNLOAD_RANGE_BYTES", 1024 * 1024, minimum=0)
    if 0 < value < 64 * 1024:
        raise ValueError(f"TWINFER_DOWNLOAD_RANGE_BYTES must be 0 (one request) or >= 65536, got {value}")
    return value


def _optional_path(name: str) -> Path | None:
    raw = os.environ.get(name, "").strip()
    return Path(raw).expanduser().resolve() if raw else None


@dataclass(frozen=True)
class ServiceSettings:
    store: Path
    http_host: str
    http_port: int
    workers: int
    default_model_dir: Path
    default_model_name: str
    default_model_version: str
    keep_versions: int
    download_max_bps: int  # 0 = no cap
    download_connect_timeout: float
    download_read_timeout: float
    download_max_attempts: int
    download_backoff_initial: float  # seconds: the first retry's backoff ceiling (doubles per failure)
    update_retry_seconds: float
    report_interval: float
    model_output: str
    max_bundle_bytes: int
    max_bundle_files: int
    trusted_keys: Path | None = None  # PEM public key file or directory; None = signatures not required
    download_range_bytes: int = 1024 * 1024  # 0 = one request per download
    download_windows: tuple[DownloadWindow, ...] = ()  # empty = always open
    serve: bool = True  # False: headless, the update pipeline without gunicorn

    @staticmethod
    def from_env() -> "ServiceSettings":
        return ServiceSettings(
            store=store_from_env(),
            http_host=os.environ.get("TWINFER_HTTP_HOST", "0.0.0.0"),
            http_port=env_int("TWINFER_HTTP_PORT", 8080, minimum=1),
            workers=worker_count(),
            default_model_dir=Path(os.environ.get("TWINFER_DEFAULT_MODEL_DIR", str(BUNDLED_MODEL_DIR))).resolve(),
            default_model_name=os.environ.get("TWINFER_DEFAULT_MODEL_NAME", "ssd-mobilenetv2-oidv4"),
            default_model_version=os.environ.get("TWINFER_DEFAULT_MODEL_VERSION", "1.0.0"),
            keep_versions=env_int("TWINFER_KEEP_VERSIONS", 3, minimum=2),
            download_max_bps=env_int("TWINFER_DOWNLOAD_MAX_BPS", 0, minimum=0),
            download_connect_timeout=env_seconds("TWINFER_DOWNLOAD_CONNECT_TIMEOUT", 10.0, minimum=0.1),
            download_read_timeout=env_seconds("TWINFER_DOWNLOAD_READ_TIMEOUT", 30.0, minimum=0.1),
            download_max_attempts=env_int("TWINFER_DOWNLOAD_MAX_ATTEMPTS", 8, minimum=1),
            download_backoff_initial=env_seconds("TWINFER_DOWNLOAD_BACKOFF_INITIAL", 1.0, minimum=0.0),
            update_retry_seconds=env_seconds("TWINFER_UPDATE_RETRY_SECONDS", 300.0, minimum=0.1),
            report_interval=env_seconds("TWINFER_REPORT_INTERVAL", 2.0, minimum=0.0),
            model_output=os.environ.get("TWINFER_MODEL_OUTPUT", "DLModelOutput"),
            max_bundle_bytes=env_int("TWINFER_MAX_BUNDLE_BYTES", 2 * 1024**3, minimum=1),
            max_bundle_files=env_int("TWINFER_MAX_BUNDLE_FILES", 16, minimum=1),
            trusted_keys=_optional_path("TWINFER_TRUSTED_KEYS"),
            download_range_bytes=_range_bytes(),
            download_windows=parse_windows_env(os.environ.get("TWINFER_DOWNLOAD_WINDOWS", "")),
            serve=env_bool("TWINFER_SERVE", True),
        )

    @property
    def metrics_dir(self) -> Path:
        return StoreLayout(self.store).metrics
