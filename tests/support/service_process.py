"""Run the real supervisor (and so real gunicorn) in a subprocess on 127.0.0.1."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import requests

from tests.support.paths import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        cls, store: Path, workers: int = 2, extra_env: dict[str, str] | None = None, wait_ready: bool = True
    ) -> Iterator["ServiceProcess"]:
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
                [sys.executable, "-m", "service"], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
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

    def wait_workers_ready(self, workers: int, timeout: float = 60.0) -> None:
        """Ready means every worker reports a loaded model in the shared metrics."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log()}")
            try:
                text = requests.get(self.url + "/metrics", timeout=2).text
                loaded = [l for l in text.splitlines() if l.startswith("twinfer_worker_model_info{") and l.endswith(" 1.0")]
                if len(loaded) >= workers:
                    return
            except (requests.ConnectionError, requests.Timeout):  # a loaded machine may answer late
                pass
            time.sleep(0.2)
        raise TimeoutError(f"service not ready in {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
