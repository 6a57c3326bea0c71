"""The supervisor's metrics, written into the same multiprocess directory the workers
use, so one scrape of any worker's ``/metrics`` shows downloads and serving together.

``PROMETHEUS_MULTIPROC_DIR`` is set by ``service.cli`` before this module is imported.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DOWNLOAD_BYTES = Counter("twinfer_download_bytes_total", "Model bundle bytes received over the network.")
DOWNLOAD_BYTES_SAVED = Counter(
    "twinfer_download_bytes_saved_total",
    "Bundle bytes that did not cross the network: by delta (bundle size - patch bytes) or resume.",
    ["reason"],
)
DOWNLOAD_SECONDS = Histogram(
    "twinfer_download_duration_seconds",
    "Wall time of completed model bundle downloads (resumes included).",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
)
DOWNLOAD_RATE = Gauge(
    "twinfer_download_rate_bytes_per_second", "Current download rate, by model (0 when idle).", ["model"],
    multiprocess_mode="livemax",
)
DOWNLOAD_FAILURES = Counter("twinfer_download_failures_total", "Failed model updates, by reason.", ["reason"])
STAGED_VERSIONS = Gauge(
    "twinfer_staged_model_versions", "Model versions kept in the local repository.", multiprocess_mode="livemax"
)
LAST_UPDATE = Gauge(
    "twinfer_model_last_update_timestamp_seconds",
    "Unix time of the last successful model publish.",
    multiprocess_mode="max",
)
UPDATES = Counter("twinfer_model_updates_total", "Model update attempts, by result.", ["result"])
VARIANTS_REJECTED = Counter(
    "twinfer_model_variants_rejected_total",
    "Model variants this device refused and passed over for the next one (service.update.variants), by model, "
    "variant and reason (variant_rejected: below its verification gate on this CPU; invalid_model).",
    ["model", "variant", "reason"],
)
