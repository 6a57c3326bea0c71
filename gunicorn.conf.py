"""gunicorn settings for the twinfer worker pool; the supervisor (``python -m service``)
runs ``gunicorn -c gunicorn.conf.py`` with the environment it prepared."""
import os
from pathlib import Path

from prometheus_client import multiprocess

from workers.worker_state import remove_state

bind = f"{os.environ.get('TWINFER_HTTP_HOST', '0.0.0.0')}:{os.environ.get('TWINFER_HTTP_PORT', '8080')}"
workers = int(os.environ.get("TWINFER_WORKERS") or os.cpu_count() or 1)
# sync workers: inference is CPU-bound and each worker owns its share of the cores,
# so one request at a time per process is the fastest shape (see ops/bench).
worker_class = "sync"
timeout = int(os.environ.get("TWINFER_WORKER_TIMEOUT", "30"))
graceful_timeout = 10
keepalive = 5
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
wsgi_app = "workers.app:create_app()"
accesslog = os.environ.get("TWINFER_ACCESS_LOG") or None
loglevel = os.environ.get("TWINFER_LOG_LEVEL", "info")
# The supervisor is the only controller; no socket under $HOME (read-only in the container).
control_socket_disable = True


def child_exit(server, worker):
    """Drop a dead worker's live gauges (model version, in-flight, worker count) and its
    state file, so the supervisor counts only live workers in a rollout."""
    multiprocess.mark_process_dead(worker.pid)
    remove_state(Path(os.environ.get("TWINFER_STORE", "var")).resolve(), worker.pid)
