"""A validated version -> the manifest, the pool, the twin and the routing message.

Publishing writes the model's entry in the manifest (the memory budget checked under its
lock; workers follow it, one at a time) and then follows the rollout until every worker
serves the new generation; a version the workers refuse has
been rolled back by the rollout monitor by then and the update fails with
``worker_load_failed``. Once it serves: the version's high-water mark is raised, old
versions are pruned (never a version serving, nor the one the new one replaced), and the reference
design's model-ready message names where the model lives.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from service import metrics
from service.repository import ModelRepository, read_bundle_record
from service.twin.base import TwinSource
from service.update import failures
from service.update.desired import DesiredModel
from service.update.failures import UpdateFailed
from service.update.memory_budget import MemoryBudget, weights_bytes
from service.update.rollout import RolloutMonitor
from service.update.status import ModelStatus
from service.update.trust import Trust
from twinfer.engines import ENGINE_FORMATS
from twinfer.manifest import Manifest, ModelEntry, publish, read_manifest

log = logging.getLogger("twinfer.updater")


@dataclass(frozen=True)
class PublishConfig:
    keep_versions: int
    rollout_timeout: float  # for every worker to serve a published model
    model_output: str  # the output the model-ready message goes to (the reference design's routing)
    memory_budget: MemoryBudget = MemoryBudget(None)


class Publisher:
    def __init__(
        self, repo: ModelRepository, twin: TwinSource, status: ModelStatus, rollout: RolloutMonitor, trust: Trust,
        config: PublishConfig, lane: str | None = None,
    ) -> None:
        """``lane``: the model name of a ``models`` lane; None for the default model's."""
        self._lane = lane
        self._repo = repo
        self._twin = twin
        self._status = status
        self._rollout = rollout
        self._trust = trust
        self.config = config

    def publish(self, target: DesiredModel, format: str, decoder: str, threshold: float | None) -> ModelEntry:
        """Publish, then follow the rollout: active once every worker serves it. ``target`` is
        the one bundle staged (its ``variant`` goes into the manifest entry)."""
        store = self._repo.store
        before = read_manifest(store)
        previous = before.entry(self._lane) if before else None
        directory = self._repo.version_dir(target.name, target.version)
        weights = weights_bytes(directory)
        # A document naming no variant (a rollback by name and version) keeps the staged one's.
        variant = target.variant if target.variant is not None else read_bundle_record(directory).get("variant")

        def admit(current: Manifest | None) -> None:
            self.config.memory_budget.check(store, current, target.name, target.version, weights)

        manifest = publish(
            store, target.name, target.version, self._repo.relative(directory), format, decoder, threshold,
            default=self._lane is None, admit=admit, variant=variant,
        )
        self._status.active(manifest, state="rolling_out")
        outcome = self._rollout.wait(manifest.generation, self.config.rollout_timeout)
        if outcome.result in ("rolled_back", "failed"):
            raise UpdateFailed(
                failures.WORKER_LOAD_FAILED,
                f"{target.name} {target.version} did not load in the workers: {outcome.reason}",
                state=outcome.result,
            )
        if outcome.result == "timeout":
            log.warning("rollout of generation %d incomplete after %.0f s (%d of %d workers)",
                        manifest.generation, self.config.rollout_timeout, outcome.workers_on_new, outcome.workers)
        self._trust.note_activated(target.name, target.version, target.version_is_digest)
        serving = read_manifest(store)
        protect = {directory} | ({previous.model_dir(store)} if previous else set())
        protect |= {entry.model_dir(store) for entry in (serving.models.values() if serving else ())}
        for removed in self._repo.prune(self.config.keep_versions, protect):
            log.info("removed old model version %s", removed)
        metrics.STAGED_VERSIONS.set(len(self._repo.versions()))
        metrics.LAST_UPDATE.set(time.time())
        metrics.UPDATES.labels("published").inc()
        self._status.published(target.file_name)
        self._status.clear_error()
        self._status.active(manifest)
        self._announce(manifest)
        return manifest

    def _announce(self, manifest: ModelEntry) -> None:
        """The reference design's routing message: where the new model lives."""
        directory = manifest.model_dir(self._repo.store)
        model_file = next((p for p in directory.iterdir() if p.suffix.lower() in ENGINE_FORMATS), None)
        labels = next(iter(sorted(directory.glob("*.txt"))), None)
        payload = {
            "local_model_path": self._repo.relative(model_file) if model_file else None,
            "local_labelmap_path": self._repo.relative(labels) if labels else None,
            "name": manifest.name,
            "version": manifest.version,
            "generation": manifest.generation,
        }
        try:
            self._twin.send_event(self.config.model_output, payload)
        except Exception as exc:  # the model is live either way; the message is best effort
            log.warning("could not send the model-ready message: %s", exc)
