"""The reported ``models.<name>`` object (and ``model`` for the default model): its one writer per model.

The updater (each step of an update) and the rollout monitor (workers on the new
generation, a rollback) both have something to say about the model; both say it here, so
every report carries the state, the desired document's ``$version``, its target and its
error together, with one timestamp style, and no field is left over from an earlier
document. Thread-safe: the updater and the monitor run in their own threads.

One ``ModelStatus`` per model lane (``service.update.pool``): a named lane writes
``models.<name>``; the default lane writes ``model`` and ``models.<its model's name>``
with the same content, so clients of either shape see it.
"""
from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

from service.report import Reporter
from service.update.desired import DesiredModel
from service.update.fetch import DownloadProgress
from twinfer.decoders import task_of
from twinfer.manifest import ModelEntry

# Reported properties merge: a report that is not "scheduled" clears a past wait.
_NOT_SCHEDULED = {"scheduled_for": None, "waiting_for": None}
# ... and ``variant`` is written whole, so no field of an earlier document's survives.
_VARIANT_FIELDS = ("name", "cpu", "int8", "skipped", "rejected", "verification")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def error_record(reason: str, message: str, figures: dict | None = None) -> dict:
    """``model.last_error``: a ``service.update.failures`` reason, what to do, when (and the
    figures measured, e.g. a rejected variant's agreement)."""
    return {"reason": reason, "message": message, "at": utc_now(), "figures": figures}  # null clears older figures


def active_record(manifest: ModelEntry | None) -> dict | None:
    """``model.active``: what the manifest serves."""
    if manifest is None:
        return None
    return {
        "name": manifest.name, "version": manifest.version, "generation": manifest.generation,
        "format": manifest.format, "task": task_of(manifest.decoder), "decoder": manifest.decoder,
        "score_threshold": manifest.score_threshold,
        "variant": manifest.variant,
        "since": datetime.fromtimestamp(manifest.published_at, timezone.utc).isoformat(timespec="seconds"),
    }


def progress_record(p: DownloadProgress) -> dict:
    """``model.progress`` while downloading."""
    return {
        "bytes": p.received,
        "total": p.total,
        "percent": round(100.0 * p.received / p.total, 1) if p.total else None,
        "rate_bps": round(p.rate_bps),
        "eta_s": round(p.eta_seconds) if p.eta_seconds is not None else None,
    }


class ModelStatus:
    """What the twin is told about the model; ``restored`` is the outcome persisted for the
    last handled document (``service.update.inbox.HandledRecord``), so a restart reports
    the same desired version, target and error."""

    def __init__(self, reporter: Reporter, restored: dict | None = None, lane: str | None = None) -> None:
        restored = restored or {}
        self.lane = lane  # None: the default model's lane
        self._reporter = reporter
        self._lock = threading.Lock()
        self.desired_version: int | None = restored.get("desired_version")
        self.target: dict | None = restored.get("target")
        self.last_error: dict | None = restored.get("last_error")
        # model.variant: which of the twin's variants this device chose and why (CPU, the
        # verification figures, the variants rejected or passed over); None without variants.
        self.variant: dict | None = restored.get("variant")
        self._name: str | None = lane or (self.target or {}).get("name")  # the model reported under models.<name>

    def _payload(self, model: dict) -> dict:
        with self._lock:
            name = self._name
        payload = {"models": {name: model}} if name else {}
        return payload if self.lane is not None else {**payload, "model": model}

    def _describe(self, name: str | None) -> None:
        """The default lane's model changed name (another model replaces it): the old
        name's entry goes."""
        if self.lane is not None or name is None:
            return
        with self._lock:
            old, self._name = self._name, name
        if old is not None and old != name:
            self._reporter.update({"models": {old: None}})

    # --- what the next reports are about -------------------------------------------------

    def new_document(self, desired_version: int | None, fresh: bool) -> None:
        """A desired document is being handled; ``fresh``: not a retry of the last one, so
        an earlier document's error says nothing of it."""
        with self._lock:
            self.desired_version = desired_version
            if fresh:
                self.last_error = None
                self.variant = None

    def aim(self, target: DesiredModel | None) -> None:
        with self._lock:
            self.target = None if target is None else {"name": target.name, "version": target.version}

    def note_error(self, reason: str, message: str, figures: dict | None = None) -> None:
        """An error the next report carries (the damaged versions replaced at start-up)."""
        with self._lock:
            self.last_error = error_record(reason, message, figures)

    def clear_error(self) -> None:
        with self._lock:
            self.last_error = None

    def note_variant(self, **fields: Any) -> None:
        """What the next reports say under ``variant`` (merged into what is there)."""
        with self._lock:
            self.variant = {**dict.fromkeys(_VARIANT_FIELDS), **(self.variant or {}), **fields}

    def outcome(self, state: str) -> dict:
        """The record persisted with a handled document."""
        with self._lock:
            return {"state": state, "desired_version": self.desired_version, "target": self.target,
                    "last_error": self.last_error, "variant": self.variant}

    # --- reports --------------------------------------------------------------------------

    def write(self, state: str, **fields: Any) -> None:
        with self._lock:
            model = {
                "state": state, "desired_version": self.desired_version, "target": self.target,
                "last_error": self.last_error, "variant": self.variant, "updated_at": utc_now(), **_NOT_SCHEDULED,
                **fields,
            }
        self._reporter.update(self._payload(model))

    def step(self, target: DesiredModel, state: str, **fields: Any) -> None:
        """A step of the update to ``target`` (downloading, verifying, staging, scheduled)."""
        self.aim(target)
        self.write(state, **fields)

    def active(self, manifest: ModelEntry | None, state: str = "active") -> None:
        self._describe(manifest.name if manifest else None)
        self.write(state, active=active_record(manifest), progress=None)

    def removed(self) -> None:
        """The model left the pool: its entry goes (a named lane only)."""
        self._reporter.update({"models": {self.lane: None}})

    def failure(self, reason: str, message: str, state: str = "failed", serving: ModelEntry | None = None,
                figures: dict | None = None) -> None:
        """An update ended without its target serving; ``serving``: what the pool went back to
        (a rollback), reported as ``active`` with the failure."""
        self.note_error(reason, message, figures)
        if serving is not None:
            self.write(state, active=active_record(serving), progress=None)
        else:
            self.write(state, progress=None)

    def rollout(self, generation: int, on_new: int, workers: int) -> None:
        """How many workers serve the published generation (only this sub-object changes)."""
        self._reporter.update(self._payload({"rollout": {
            "generation": generation, "workers_on_new": on_new, "workers": workers, "complete": on_new >= workers,
        }}))

    def published(self, file_name: str) -> None:
        """The reference design's top-level property: the default model's bundle activated last."""
        if self.lane is None:
            self._reporter.update({"LatestAIModelFileName": file_name})
