"""Watches the pool follow the manifest: progress, completion, and rollback on failure.

Each model rolls out on its own. A rollout of model M at generation G is complete when
every live worker (as many as gunicorn runs) serves M at G. If a worker records that it
could not load G, the pool would otherwise run two versions of M forever: the monitor
publishes the last version of M that completed (same model, new generation number), so
the pool converges back, and says why on M's status. A default model replaced by one of
another name that fails goes back to the last default that completed. With no pool
(``expected_workers`` 0: a headless supervisor) there is nobody to wait for, and every
generation is complete at its first check.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from service.update import failures
from service.update.status import ModelStatus
from twinfer.manifest import Manifest, ModelEntry, publish, read_manifest
from twinfer.worker_state import WorkerState, read_states

log = logging.getLogger("twinfer.rollout")


@dataclass(frozen=True)
class RolloutOutcome:
    result: str  # "complete", "rolled_back", "failed" (no earlier good version), "timeout"
    reason: str | None = None
    workers_on_new: int = 0
    workers: int = 0


class RolloutMonitor:
    def __init__(
        self, store: Path, status_of: Callable[[str, bool], ModelStatus], expected_workers: int,
        poll_seconds: float = 0.1,
    ) -> None:
        """``status_of(name, is_default)``: the status writer of that model's lane."""
        self.store = store
        self.status_of = status_of
        self.expected_workers = expected_workers
        self.poll_seconds = poll_seconds
        self._last_good: dict[str, ModelEntry] = {}
        self._last_good_default: ModelEntry | None = None
        self._outcomes: dict[int, RolloutOutcome] = {}
        self._progress: dict[str, tuple[int, int, int]] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollout-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def goes_back_to(self, directory: str) -> bool:
        """Whether a failing rollout would publish ``directory`` (relative to the store) again:
        the last version of a model every worker served."""
        goods = [*self._last_good.copy().values(), self._last_good_default]  # copy(): atomic beside the monitor
        return any(good is not None and good.directory == directory for good in goods)

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
                    progress = next((p for p in self._progress.values() if p[0] == generation), (0, 0, 0))
                    return RolloutOutcome("timeout", "workers did not all load it in time", progress[1], progress[2])
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
        for entry in list(manifest.models.values()):
            self._check_model(manifest, entry, states)

    def _check_model(self, manifest: Manifest, entry: ModelEntry, states: list[WorkerState]) -> None:
        on_new = sum(1 for s in states if s.generation_of(entry.name) == entry.generation)
        total = max(len(states), self.expected_workers)
        is_default = entry.name == manifest.default
        self._report_progress(entry, is_default, on_new, total)
        errors = [
            s.last_error["message"] for s in states
            if s.last_error and s.last_error.get("generation") == entry.generation
        ]
        if errors:
            self._fail(entry, is_default, errors[0], on_new, total)
        elif on_new >= total and entry.generation not in self._outcomes:
            self._last_good[entry.name] = entry
            if is_default:
                self._last_good_default = entry
            self._settle(entry.generation, RolloutOutcome("complete", None, on_new, total))
            log.info("rollout of %s %s (generation %d) complete on %d workers", entry.name, entry.version,
                     entry.generation, total)

    def _report_progress(self, entry: ModelEntry, is_default: bool, on_new: int, total: int) -> None:
        progress = (entry.generation, on_new, total)
        if self._progress.get(entry.name) == progress:
            return
        with self._cond:
            self._progress[entry.name] = progress
        self.status_of(entry.name, is_default).rollout(entry.generation, on_new, total)

    def _fail(self, entry: ModelEntry, is_default: bool, message: str, on_new: int, total: int) -> None:
        good = self._last_good.get(entry.name) or (self._last_good_default if is_default else None)
        if good is None or good.directory == entry.directory:
            if entry.generation not in self._outcomes:
                log.error("workers cannot load generation %d and there is no earlier good version: %s",
                          entry.generation, message)
                self._settle(entry.generation, RolloutOutcome("failed", message, on_new, total))
            return
        if entry.generation in self._outcomes:
            return
        log.error("workers cannot load %s %s (%s); rolling back to %s %s", entry.name, entry.version, message,
                  good.name, good.version)
        publish(self.store, good.name, good.version, good.directory, good.format, good.decoder, good.score_threshold,
                default=is_default, variant=good.variant)
        self._settle(entry.generation, RolloutOutcome("rolled_back", message, on_new, total))
        serving = read_manifest(self.store)
        self.status_of(entry.name, is_default).failure(
            failures.WORKER_LOAD_FAILED, f"{entry.name} {entry.version} did not load in the workers: {message}",
            state="rolled_back", serving=serving.entry(good.name) if serving else None,
        )

    def _settle(self, generation: int, outcome: RolloutOutcome) -> None:
        with self._cond:
            self._outcomes[generation] = outcome
            self._cond.notify_all()
