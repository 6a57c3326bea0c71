"""Prometheus metrics shared by every gunicorn worker (prometheus-client multiprocess mode).

``PROMETHEUS_MULTIPROC_DIR`` must be set before this module is imported; the supervisor
sets it, wipes the directory at start, and gunicorn's ``child_exit`` hook marks dead
workers so their live gauges disappear.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUEST_SECONDS = Histogram(
    "twinfer_http_request_duration_seconds",
    "HTTP request latency, by route template, method, status and model (empty: a route that names none).",
    ["route", "method", "status", "model"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "twinfer_inference_duration_seconds",
    "Model forward-pass latency (no decoding or HTTP), by model and version.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("twinfer_http_requests_in_flight", "Requests being served now.", multiprocess_mode="livesum")
REQUEST_ERRORS = Counter(
    "twinfer_request_errors_total", "Requests refused or failed, by reason and model (empty: none resolved).",
    ["reason", "model"],
)
CONNECTIONS_DROPPED = Counter(
    "twinfer_connections_dropped_total",
    "Connections closed before their header block was in (workers/header_gate.py), by reason: header_timeout, "
    "client_limit (TWINFER_CLIENT_PENDING_LIMIT), tls_handshake (a failed handshake).",
    ["reason"],
)
WORKER_MODEL = Gauge(
    "twinfer_worker_model_info",
    "1 for the model version each live worker serves, with the variant of it (e.g. int8; empty: the twin named "
    "none); label pid added by multiprocess mode.",
    ["model", "version", "generation", "variant"],
    multiprocess_mode="liveall",
)
WORKER_GENERATION = Gauge(
    "twinfer_worker_model_generation", "Manifest generation of each model each live worker serves (0: unloaded).",
    ["model"], multiprocess_mode="liveall",
)
MODEL_RELOADS = Counter(
    "twinfer_model_reloads_total", "Worker model loads (start-up and swaps), by model and result.", ["model", "result"]
)
MODEL_RELOAD_SECONDS = Histogram(
    "twinfer_model_reload_duration_seconds",
    "Load + warm-up + drain time of a worker's model swap, by model.",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
WORKERS = Gauge("twinfer_workers", "Live gunicorn workers.", multiprocess_mode="livesum")
CHAIN_UNFED = Gauge(
    "twinfer_chain_unfed",
    "1 while a chained model (twinfer.json chain) is served without the detector it names, in any live worker: "
    "its /predict answers 503 chain_unavailable; 0 once its detector is served, and after it leaves.",
    ["model", "detector"], multiprocess_mode="livemax",
)


def exposition() -> bytes:
    """Every process's samples merged, in the text exposition format."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)
