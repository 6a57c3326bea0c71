"""The supervisor process: serve with gunicorn, follow the twin, keep both alive.

gunicorn runs as a child; signals are forwarded to it. Nothing is restarted silently:
if gunicorn dies without being asked to, the supervisor exits non-zero so the container
runtime (IoT Edge's restart policy) sees the failure. Beside it, the twin source feeds
desired properties to the model pool (one update lane per model), which publishes new
manifests.

Headless (``TWINFER_SERVE=0``): no gunicorn and no HTTP, only the update pipeline. A
download-only device keeps its store current for another consumer, and a fleet benchmark
runs many supervisors on one machine; the process then runs until SIGTERM/SIGINT.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from service.bootstrap import ensure_active_model
from service.report import Reporter
from service.repository import ModelRepository
from service.settings import PROJECT_ROOT, ServiceSettings
from service.twin.factory import create_twin_source
from service.update.bundle import UnpackLimits
from service.update.fetch import DownloadPolicy
from service.update.link import SharedLink
from service.update.memory_budget import MemoryBudget
from service.update.pool import ModelPool
from service.update.status import ModelStatus
from service.update.updater import UpdaterConfig
from service.update.variants import int8_policy

log = logging.getLogger("twinfer.supervisor")
GUNICORN_CONFIG_MODULE = "workers.gunicorn_config"  # by module name: found wherever twinfer is installed
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HEADLESS_POLL_SECONDS = 0.2  # how soon a headless supervisor notices the signal that stops it


def gunicorn_env(settings: ServiceSettings) -> dict[str, str]:
    from twinfer.settings_table import SETTINGS
    from workers.settings import check_server_protection

    env = dict(os.environ)
    check_server_protection(env)  # tokens, TLS pair, worker class: a clear error before gunicorn starts
    # gunicorn runs in the package's directory: a relative path means the operator's directory.
    env.update({s.name: str(s.read(env)) for s in SETTINGS if s.kind == "path" and env.get(s.name, "").strip()})
    env.update(
        TWINFER_STORE=str(settings.store),
        TWINFER_HTTP_HOST=settings.http_host,
        TWINFER_HTTP_PORT=str(settings.http_port),
        TWINFER_WORKERS=str(settings.workers),
        PROMETHEUS_MULTIPROC_DIR=str(settings.metrics_dir),
    )
    return env


def updater_config(settings: ServiceSettings) -> UpdaterConfig:
    from service.update.signing import KeyFileError, load_trusted_keys

    # Keys configured but unreadable fail closed: the updater then refuses every model (and
    # says why) while the current one keeps serving; unset = signatures not required.
    trusted_keys, trusted_keys_error = None, None
    if settings.trusted_keys is None:
        log.info("TWINFER_TRUSTED_KEYS unset: bundle signatures are not required")
    else:
        try:
            trusted_keys = tuple(load_trusted_keys(settings.trusted_keys))
            log.info("bundle signatures required; trusted keys: %s", ", ".join(k.key_id for k in trusted_keys))
        except KeyFileError as exc:
            trusted_keys, trusted_keys_error = (), str(exc)
            log.error("TWINFER_TRUSTED_KEYS: %s; every model update is refused until it is fixed", exc)
    int8 = int8_policy(settings.variant_int8)
    log.info("int8 model variants %s here: %s", "taken" if int8.fast else "passed over", int8.why)
    return UpdaterConfig(
        keep_versions=settings.keep_versions,
        policy=DownloadPolicy(
            connect_timeout=settings.download_connect_timeout,
            read_timeout=settings.download_read_timeout,
            max_attempts=settings.download_max_attempts,
            backoff_initial=settings.download_backoff_initial,
            rate_limit_bps=settings.download_max_bps or None,
            range_bytes=settings.download_range_bytes,
            link=SharedLink(),  # one link: downloads of several models at once share its cap
        ),
        memory_budget=MemoryBudget(settings.model_memory_budget or None),
        windows=settings.download_windows,
        limits=UnpackLimits(max_files=settings.max_bundle_files, max_total_bytes=settings.max_bundle_bytes),
        model_output=settings.model_output,
        retry_seconds=settings.update_retry_seconds,
        trusted_keys=trusted_keys,
        trusted_keys_error=trusted_keys_error,
        int8=int8,
    )


class Supervisor:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.serve = settings.serve
        self.repo = ModelRepository(settings.store)
        self._child: subprocess.Popen | None = None
        self._stopping = False

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        if self._child is not None and self._child.poll() is None:
            log.info("forwarding %s to gunicorn (pid %d)", signal.Signals(signum).name, self._child.pid)
            self._child.send_signal(signum)

    def run(self) -> int:
        """Prepare the store, serve (unless headless), follow the twin until gunicorn exits
        (headless: until SIGTERM/SIGINT); returns the exit code."""
        self.repo.prepare()
        damaged: list[str] = []
        ensure_active_model(
            self.repo, self.settings.default_model_dir, self.settings.default_model_name,
            self.settings.default_model_version, damaged,
        )
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, self._forward)
        if self.serve:
            command = [sys.executable, "-m", "gunicorn", "-c", f"python:{GUNICORN_CONFIG_MODULE}"]
            self._child = subprocess.Popen(command, cwd=PROJECT_ROOT, env=gunicorn_env(self.settings))
            log.info(
                "gunicorn (pid %d) serving on %s:%d with %d workers",
                self._child.pid, self.settings.http_host, self.settings.http_port, self.settings.workers,
            )
        else:
            log.info("headless (TWINFER_SERVE=0): no gunicorn, no HTTP; updating the store until SIGTERM/SIGINT")
        twin = create_twin_source(self.settings.store, os.environ)
        reporter = Reporter(twin, min_interval=self.settings.report_interval)
        pool = ModelPool(self.repo, twin, lambda outcome, lane: ModelStatus(reporter, outcome, lane),
                         self.settings.workers if self.serve else 0, updater_config(self.settings))
        pool.start(startup_problems=damaged)
        twin.start(pool.on_desired)
        log.info("following the %s twin", twin.kind)
        try:
            code = self._child.wait() if self._child is not None else self._wait_for_signal()
        finally:
            pool.stop()
            reporter.close()
            twin.close()
        if self._child is None:
            log.info("headless supervisor stopped")
            return 0
        if self._stopping:
            log.info("gunicorn stopped (exit %d)", code)
            return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code
        log.error("gunicorn exited unexpectedly with %d; stopping so the restart policy can act", code)
        return code if code > 0 else 1

    def _wait_for_signal(self) -> int:
        """Sleep until a forwarded signal arrives. The handler only sets a flag: waking an Event
        from a signal handler can deadlock when the signal lands inside that Event's own wait."""
        while not self._stopping:
            time.sleep(HEADLESS_POLL_SECONDS)
        return 0
