"""Watches the pool follow the manifest: progress, completion, and rollback on failure.

A rollout of generation G is complete when every live worker (as many as gunicorn
runs) serves G. If a worker records that it could not load G, the pool would otherwise
run two versions forever: the monitor publishes the last generation that completed
(same model, new generation number), so the pool converges back, and says why.
With no pool (``expected_workers`` 0: a headless supervisor) there is nobody to wait
for, and every generation is complete at its first check.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from service.update import failures
from service.update.status import ModelStatus
from twinfer.manifest import Manifest, publish, read_manifest
from twinfer.worker_state import read_states

log = logging.getLogger("twinfer.rollout")


@dataclass(frozen=True)
class RolloutOutcome:
    result: str  # "complete", "rolled_back", "failed" (no earlier good version), "timeout"
    reason: str | None = None
    workers_on_new: int = 0
    workers: int = 0


class RolloutMonitor:
    def __init__(self, store: Path, status: ModelStatus, expected_workers: int, poll_seconds: float = 0.1) -> None:
        self.store = store
        self.status = status
        self.expected_workers = expected_workers
        self.poll_seconds = poll_seconds
        self._last_good: Manifest | None = None
        self._outcomes: dict[int, RolloutOutcome] = {}
        self._progress: tuple[int, int, int] | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollout-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def wait(self, generation: int, timeout: float) -> RolloutOutcome:
        """Block until the rollout of ``generation`` has an outcome (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while generation not in self._outcomes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    on_new, total = (self._progress or (0, 0, 0))[1:]
                    return RolloutOutcome("timeout", "workers did not all load it in time", on_new, total)
                self._cond.wait(remaining)
            return self._outcomes[generation]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # keep watching; a bug here must not stop serving
                log.exception("rollout check failed")
            self._stop.wait(self.poll_seconds)

    def check(self) -> None:
        manifest = read_manifest(self.store)
        if manifest is None:
            return
        states = read_states(self.store)
        on_new = sum(1 for s in states if s.generation == manifest.generation)
        total = max(len(states), self.expected_workers)
        self._report_progress(manifest.generation, on_new, total)
        failures = [
            s.last_error["message"] for s in states if s.last_error and s.last_error.get("generation") == manifest.generation
        ]
        if failures:
            self._fail(manifest, failures[0], on_new, total)
        elif on_new >= total and manifest.generation not in self._outcomes:
            self._last_good = manifest
            self._settle(manifest.generation, RolloutOutcome("complete", None, on_new, total))
            log.info("rollout of %s %s (generation %d) complete on %d workers", manifest.name, manifest.version, manifest.generation, total)

    def _report_progress(self, generation: int, on_new: int, total: int) -> None:
        if self._progress == (generation, on_new, total):
            return
        with self._cond:
            self._progress = (generation, on_new, total)
        self.status.rollout(generation, on_new, total)

    def _fail(self, manifest: Manifest, message: str, on_new: int, total: int) -> None:
        good = self._last_good
        if good is None or good.directory == manifest.directory:
            if manifest.generation not in self._outcomes:
                log.error("workers cannot load generation %d and there is no earlier good model: %s", manifest.generation, message)
                self._settle(manifest.generation, RolloutOutcome("failed", message, on_new, total))
            return
        log.error("workers cannot load %s %s (%s); rolling back to %s %s", manifest.name, manifest.version, message, good.name, good.version)
        publish(self.store, good.name, good.version, good.directory, good.format, good.decoder, good.score_threshold)
        self._settle(manifest.generation, RolloutOutcome("rolled_back", message, on_new, total))
        self.status.failure(
            failures.WORKER_LOAD_FAILED, f"{manifest.name} {manifest.version} did not load in the workers: {message}",
            state="rolled_back", serving=read_manifest(self.store),
        )

    def _settle(self, generation: int, outcome: RolloutOutcome) -> None:
        with self._cond:
            self._outcomes[generation] = outcome
            self._cond.notify_all()
