"""Run the real supervisor (and so real gunicorn) in a subprocess on 127.0.0.1."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import requests

from tests.support.paths import PROJECT_ROOT
from tests.support.waiting import wait_until


def loaded_workers(metrics: str) -> int:
    """Workers whose model is loaded, from the shared metrics' text."""
    return sum(1 for l in metrics.splitlines() if l.startswith("twinfer_worker_model_info{") and l.endswith(" 1.0"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Reported properties at once instead of every 2 s: what tests of the update pipeline start with.
QUICK_REPORTS = {"TWINFER_REPORT_INTERVAL": "0.05"}


class ServiceProcess:
    def __init__(self, proc: subprocess.Popen, port: int, store: Path, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.store = store
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"

    @classmethod
    @contextmanager
    def start(
        cls, store: Path, workers: int = 2, extra_env: dict[str, str] | None = None, wait_ready: bool = True,
        command: list[str] | None = None, cwd: Path = PROJECT_ROOT,
    ) -> Iterator["ServiceProcess"]:
        """``python -m service`` from the checkout, or ``command`` (an installed ``twinfer``)
        run in ``cwd``."""
        port = free_port()
        env = dict(os.environ)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(
            TWINFER_STORE=str(store),
            TWINFER_HTTP_HOST="127.0.0.1",
            TWINFER_HTTP_PORT=str(port),
            TWINFER_WORKERS=str(workers),
        )
        env.update(extra_env or {})  # may override the defaults above (e.g. TWINFER_HTTP_HOST)
        log_path = store.parent / f"{store.name}-service.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                command or [sys.executable, "-m", "service"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        service = cls(proc, port, store, log_path)
        try:
            if wait_ready:
                service.wait_workers_ready(workers)
            yield service
        finally:
            service.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, answered: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        """Poll ``answered`` (an HTTP check) until it holds; a request that fails or times
        out (a loaded machine answers late) is one more try, an exited service an error."""
        def probe() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log()}")
            return answered()

        try:
            wait_until(probe, what, timeout, interval=0.2, ignoring=(requests.RequestException,))
        except AssertionError as exc:
            raise TimeoutError(f"{exc}\n{self.log()}") from None

    def wait_workers_ready(
        self, workers: int, timeout: float = 60.0, url: str | None = None, **request_options
    ) -> None:
        """Ready means every worker reports a loaded model in the shared metrics, read at
        ``url`` (default: plain HTTP) with ``request_options`` for requests.get (a token,
        a CA bundle)."""

        def loaded() -> bool:
            response = requests.get((url or self.url) + "/metrics", timeout=2, **request_options)
            return response.status_code == 200 and loaded_workers(response.text) >= workers

        self.wait_until(loaded, "service not ready", timeout)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
