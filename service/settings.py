"""Supervisor configuration from the environment: the variables, their defaults and bounds
are declared in ``twinfer.settings_table`` (README "Configuration")."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.update.schedule import DownloadWindow, parse_windows_env
from twinfer.settings_table import PACKAGE_ROOT, read
from twinfer.store_layout import StoreLayout, store_from_env

# Where ``service`` and ``workers`` import from (a checkout, or site-packages): the working
# directory of every child the supervisor starts by module name.
PROJECT_ROOT = PACKAGE_ROOT


def _range_bytes() -> int:
    value = read("TWINFER_DOWNLOAD_RANGE_BYTES")
    if 0 < value < 64 * 1024:
        raise ValueError(f"TWINFER_DOWNLOAD_RANGE_BYTES must be 0 (one request) or >= 65536, got {value}")
    return value


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
    model_memory_budget: int  # bytes; 0: no cap
    max_bundle_files: int
    trusted_keys: Path | None = None  # PEM public key file or directory; None = signatures not required
    download_range_bytes: int = 1024 * 1024  # 0 = one request per download
    download_windows: tuple[DownloadWindow, ...] = ()  # empty = always open
    serve: bool = True  # False: headless, the update pipeline without gunicorn
    variant_int8: str = "auto"  # auto (by CPU features), always, never: which devices take int8 variants

    @staticmethod
    def from_env() -> "ServiceSettings":
        return ServiceSettings(
            store=store_from_env(),
            http_host=read("TWINFER_HTTP_HOST"),
            http_port=read("TWINFER_HTTP_PORT"),
            workers=read("TWINFER_WORKERS"),
            default_model_dir=read("TWINFER_DEFAULT_MODEL_DIR"),
            default_model_name=read("TWINFER_DEFAULT_MODEL_NAME"),
            default_model_version=read("TWINFER_DEFAULT_MODEL_VERSION"),
            keep_versions=read("TWINFER_KEEP_VERSIONS"),
            download_max_bps=read("TWINFER_DOWNLOAD_MAX_BPS"),
            download_connect_timeout=read("TWINFER_DOWNLOAD_CONNECT_TIMEOUT"),
            download_read_timeout=read("TWINFER_DOWNLOAD_READ_TIMEOUT"),
            download_max_attempts=read("TWINFER_DOWNLOAD_MAX_ATTEMPTS"),
            download_backoff_initial=read("TWINFER_DOWNLOAD_BACKOFF_INITIAL"),
            update_retry_seconds=read("TWINFER_UPDATE_RETRY_SECONDS"),
            report_interval=read("TWINFER_REPORT_INTERVAL"),
            model_output=read("TWINFER_MODEL_OUTPUT"),
            max_bundle_bytes=read("TWINFER_MAX_BUNDLE_BYTES"),
            model_memory_budget=read("TWINFER_MODEL_MEMORY_BUDGET"),
            max_bundle_files=read("TWINFER_MAX_BUNDLE_FILES"),
            trusted_keys=read("TWINFER_TRUSTED_KEYS"),
            download_range_bytes=_range_bytes(),
            download_windows=parse_windows_env(read("TWINFER_DOWNLOAD_WINDOWS") or ""),
            serve=read("TWINFER_SERVE"),
            variant_int8=read("TWINFER_VARIANT_INT8"),
        )

    @property
    def metrics_dir(self) -> Path:
        return StoreLayout(self.store).metrics
