"""The pool of models: one update lane per model, fed from the twin's desired document.

The twin calls in with full documents or patches; the pool merges them, splits the
result into each model's part (``service.update.pool_desired``) and hands a lane its part
only when that part changed, so a patch to one model wakes no other. Each lane
(``service.update.updater.ModelUpdater``) downloads, verifies, stages, publishes and
rolls out its model alone, in its own thread: a failing update of one model never touches
another, and a slow download of one does not delay an urgent update of another.
Downloads running at once share the link's bandwidth cap (``service.update.link``);
workers still load one model at a time, pool-wide (``workers.holder``).

Lanes exist for the default model (``None``), every model of ``models``, and every model
the manifest holds (so a model removed from the twin while the device was offline is
taken out of the pool when the twin's document arrives).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from service.repository import ModelRepository
from service.twin.base import TwinSource
from service.update.desired import merge_patch
from service.update.inbox import HandledRecord
from service.update.pool_desired import lane_documents
from service.update.rollout import RolloutMonitor
from service.update.status import ModelStatus
from service.update.updater import ModelUpdater, UpdaterConfig
from twinfer.manifest import read_manifest
from twinfer.store_layout import StoreLayout

log = logging.getLogger("twinfer.updater")


def _content(document: dict) -> dict:
    return {k: v for k, v in document.items() if k != "$version"}


class ModelPool:
    def __init__(
        self, repo: ModelRepository, twin: TwinSource, new_status: Callable[[dict, str | None], ModelStatus],
        expected_workers: int, config: UpdaterConfig,
    ) -> None:
        """``new_status(restored outcome, lane)``: the status writer of a new lane."""
        self.repo = repo
        self._twin = twin
        self._new_status = new_status
        self._config = config
        self._lock = threading.RLock()
        self._lanes: dict[str | None, ModelUpdater] = {}
        self._handed: dict[str | None, dict] = {}  # each lane's part of the last document, as handed to it
        self._desired: dict = {}
        self._started = False
        self._startup_problems: list[str] = []
        # No pool to follow when headless (expected_workers 0): every generation is complete at once.
        self.rollout = RolloutMonitor(repo.store, self.status_of, expected_workers)

    def lane(self, name: str | None) -> ModelUpdater:
        """The lane of ``name`` (None: the default model), created and started on first use."""
        with self._lock:
            updater = self._lanes.get(name)
            if updater is None:
                handled = HandledRecord(StoreLayout(self.repo.store).updater_state_of(name))
                status = self._new_status(handled.outcome, name)  # the one writer of this model's report
                updater = ModelUpdater(self.repo, self._twin, status, self.rollout, handled, self._config, name)
                self._lanes[name] = updater
                if self._started:
                    updater.start(self._startup_problems if name is None else None)
            return updater

    def status_of(self, name: str, is_default: bool) -> ModelStatus:
        return self.lane(None if is_default else name).status

    def start(self, startup_problems: list[str] | None = None) -> None:
        """Report every model the manifest serves, then follow the twin."""
        self.rollout.start()
        manifest = read_manifest(self.repo.store)
        with self._lock:
            self._startup_problems = startup_problems or []
            self.lane(None)
            for name in manifest.models if manifest else ():
                if name != manifest.default:
                    self.lane(name)
            self._started = True
            for name, updater in self._lanes.items():
                updater.start(self._startup_problems if name is None else None)

    def on_desired(self, document: dict, full: bool) -> None:
        """Twin callback (any thread)."""
        with self._lock:
            self._desired = dict(document) if full else merge_patch(self._desired, document)
            if "$version" in document:
                self._desired["$version"] = document["$version"]
            manifest = read_manifest(self.repo.store)
            held = {name for name in self._lanes if name is not None}
            held |= {name for name in (manifest.models if manifest else ()) if name != manifest.default}
            default, named = lane_documents(self._desired, held)
            for name, part in [(None, default), *named.items()]:
                if _content(part) != _content(self._handed.get(name, {"$never": True})):
                    self._handed[name] = part
                    self.lane(name).on_desired(part, True)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            lanes = list(self._lanes.values())
        for updater in lanes:
            updater.inbox.close()
        for updater in lanes:
            updater.stop(timeout)
        self.rollout.stop()
