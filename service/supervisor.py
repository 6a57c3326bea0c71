"""Start gunicorn as a child, forward signals to it, and exit when it does.

Nothing is restarted silently: if gunicorn dies without being asked to, the supervisor
exits non-zero so the container runtime (IoT Edge's restart policy) sees the failure.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from types import FrameType

from service.bootstrap import ensure_active_model
from service.repository import ModelRepository
from service.settings import PROJECT_ROOT, ServiceSettings

log = logging.getLogger("twinfer.supervisor")
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def reset_metrics_dir(settings: ServiceSettings) -> None:
    """prometheus-client multiprocess files from a previous run would be summed in: wipe them."""
    shutil.rmtree(settings.metrics_dir, ignore_errors=True)
    settings.metrics_dir.mkdir(parents=True)


def gunicorn_env(settings: ServiceSettings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TWINFER_STORE=str(settings.store),
        TWINFER_HTTP_HOST=settings.http_host,
        TWINFER_HTTP_PORT=str(settings.http_port),
        TWINFER_WORKERS=str(settings.workers),
        PROMETHEUS_MULTIPROC_DIR=str(settings.metrics_dir),
    )
    return env


class Supervisor:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.repo = ModelRepository(settings.store)
        self._child: subprocess.Popen | None = None
        self._stopping = False

    def prepare(self) -> None:
        self.repo.prepare()
        reset_metrics_dir(self.settings)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.settings.metrics_dir)
        ensure_active_model(
            self.repo,
            self.settings.default_model_dir,
            self.settings.default_model_name,
            self.settings.default_model_version,
        )

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        if self._child is not None and self._child.poll() is None:
            log.info("forwarding %s to gunicorn (pid %d)", signal.Signals(signum).name, self._child.pid)
            self._child.send_signal(signum)

    def run(self) -> int:
        """Prepare the store, run gunicorn until it exits; the return value is the exit code."""
        self.prepare()
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, self._forward)
        command = [sys.executable, "-m", "gunicorn", "-c", str(PROJECT_ROOT / "gunicorn.conf.py")]
        self._child = subprocess.Popen(command, cwd=PROJECT_ROOT, env=gunicorn_env(self.settings))
        log.info(
            "gunicorn (pid %d) serving on %s:%d with %d workers",
            self._child.pid, self.settings.http_host, self.settings.http_port, self.settings.workers,
        )
        code = self._child.wait()
        if self._stopping:
            log.info("gunicorn stopped (exit %d)", code)
            return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code
        log.error("gunicorn exited unexpectedly with %d; stopping so the restart policy can act", code)
        return code if code > 0 else 1
