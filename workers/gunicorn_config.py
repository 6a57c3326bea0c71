"""gunicorn settings for the twinfer worker pool; the supervisor (``twinfer run``) starts
``gunicorn -c python:workers.gunicorn_config`` with the environment it prepared. A module
of the package, so an installed twinfer finds it from any directory; the project's
top-level ``gunicorn.conf.py`` re-exports it for ``gunicorn -c gunicorn.conf.py``."""
import os

from prometheus_client import multiprocess

from twinfer.settings_table import read
from twinfer.store_layout import store_from_env
from twinfer.worker_state import remove_state
from workers.settings import check_server_protection

bind = f"{read('TWINFER_HTTP_HOST')}:{read('TWINFER_HTTP_PORT')}"
workers = read("TWINFER_WORKERS")
# Worker class and threads (README "Security": ops/bench/slow_clients.py measured the
# choice). gthread: a client trickling its upload holds one thread, not a whole worker, so
# K slow clients leave inference to the other threads. Both classes add a deadline on the
# request header block (TWINFER_HEADER_TIMEOUT, workers/gunicorn_workers.py); the app
# puts one on the body (TWINFER_BODY_TIMEOUT, workers/limits.py).
WORKER_CLASSES = {
    "gthread": "workers.gunicorn_workers.ThreadDeadlineWorker",
    "sync": "workers.sync_worker.SyncDeadlineWorker",
}
# gthread is the default. (POSTs on a reused connection used to fail with
# RemoteDisconnected after an error answer, ops/bench/soak.py --keep-alive: the app closed
# the connection without saying so. It now answers "Connection: close" first,
# workers.limits.close_connection; the soak saw 0 errors in 1800 kept-alive requests.)
# sync workers with the deadlines only bound each slow connection: K = workers x 2 slow
# clients still left normal clients 0 % of their requests (README "Security").
try:
    check_server_protection()  # the same clear errors as the supervisor gives, for `gunicorn -c` alone
except ValueError as exc:
    raise SystemExit(str(exc)) from None
_worker_class = read("TWINFER_WORKER_CLASS")
worker_class = WORKER_CLASSES[_worker_class]
threads = read("TWINFER_THREADS") if _worker_class == "gthread" else 1
timeout = read("TWINFER_WORKER_TIMEOUT")
# TLS: both files or neither (README "Security").
certfile = str(read("TWINFER_TLS_CERT") or "") or None
keyfile = str(read("TWINFER_TLS_KEY") or "") or None
graceful_timeout = 10
keepalive = 5
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
wsgi_app = "workers.app:create_app()"
accesslog = read("TWINFER_ACCESS_LOG")
loglevel = read("TWINFER_LOG_LEVEL")
# The supervisor is the only controller; no socket under $HOME (read-only in the container).
control_socket_disable = True


def child_exit(server, worker):
    """Drop a dead worker's live gauges (model version, in-flight, worker count) and its
    state file, so the supervisor counts only live workers in a rollout."""
    multiprocess.mark_process_dead(worker.pid)
    remove_state(store_from_env(), worker.pid)


def worker_exit(server, worker):
    """A worker that has finished ends as a forked ``multiprocessing`` child does, with
    ``os._exit`` and its exit code: nothing in interpreter shutdown is needed (the master
    drops its metrics in ``child_exit``), and LiteRT's process-wide state would print a
    line per accelerator from its destructors at every exit (twinfer/native_stderr.py)."""
    import logging
    import sys

    ending = sys.exc_info()[1]  # gunicorn calls this while the worker's SystemExit unwinds
    if isinstance(ending, SystemExit) and isinstance(ending.code, (int, type(None))):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(ending.code or 0)


def ssl_context(conf, default_ssl_context_factory):
    """TLS as gunicorn sets it up, plus: an end of stream without close_notify is an end of
    input, not a fatal error. The body deadline (workers/limits.py) ends a stalled upload by
    shutting the socket's read side; without this option OpenSSL would then refuse to send
    the 408 that explains why."""
    import ssl

    context = default_ssl_context_factory()
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    return context
