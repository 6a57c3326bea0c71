"""Holds the models this worker serves, and swaps each without failing a request.

A background thread watches the manifest (a stat every 100 ms). When a model's
generation changes (a new version, a new model), the worker takes the pool-wide reload
lock (so one load at a time across the pool, whatever the model: at most one extra model
copy in the pool and one worker's CPU spent on loading), loads and warms up the new
version while the old one keeps serving, swaps the reference, waits for requests still
running on the old version, drops it, records its state and releases the lock. A model
taken out of the manifest is unloaded once its requests are done. The default model (the
one a request without a model name gets) changes only once the new default is loaded, so
a twin naming another default model fails no request either. A version that fails to
load is not retried for that generation; the old one keeps serving and the error is
recorded for the supervisor, which rolls the manifest back.
"""
from __future__ import annotations

import gc
import logging
import os
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from twinfer.engines.base import EngineOptions
from twinfer.loader import load_model
from twinfer.manifest import Manifest, ModelEntry, read_manifest
from twinfer.pipeline import VisionModel
from twinfer.store_layout import StoreLayout
from twinfer.worker_state import WorkerState
from workers import metrics
from workers.inference_slots import InferenceSlots

log = logging.getLogger("twinfer.worker")
MANIFEST_POLL_SECONDS = 0.1
DRAIN_TIMEOUT_SECONDS = 60.0
# The watcher thread loads and warms up new versions: at a lower priority than the request
# threads (Linux nices a thread on its own), so a swap at saturation takes CPU the requests
# leave, not theirs. Threads it starts (a runtime's) inherit it.
RELOAD_NICENESS = 5


class ServingModel:
    """A loaded model and the manifest entry it came from, with its in-flight count."""

    def __init__(self, model: VisionModel, manifest: ModelEntry, loaded_at: float) -> None:
        self.model = model
        self.manifest = manifest
        self.loaded_at = loaded_at
        self._in_flight = 0
        self._idle = threading.Condition()

    @contextmanager
    def in_use(self) -> Iterator["ServingModel"]:
        with self._idle:
            self._in_flight += 1
        try:
            yield self
        finally:
            with self._idle:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)


class ModelHolder:
    def __init__(self, store: Path, options: EngineOptions, slots: InferenceSlots) -> None:
        self.store = store
        self.options = options
        self.slots = slots
        # Replaced, never changed in place: a request reads one consistent pool.
        self.models: dict[str, ServingModel] = {}
        self.default: str | None = None
        self.manifest: Manifest | None = None  # the last one followed: what this worker should serve
        self.state = WorkerState(pid=os.getpid())
        self._failed: dict[str, int] = {}  # model -> the generation that failed to load here
        self._chains: dict[str, str] = {}  # chained model -> the detector its twinfer_chain_unfed series names
        self._stop = threading.Event()
        self._lock = FileLock(str(StoreLayout(store).reload_lock))

    @property
    def current(self) -> ServingModel | None:
        """The default model, as loaded here."""
        return self.models.get(self.default) if self.default else None

    @property
    def last_error(self) -> str | None:
        return self.state.last_error["message"] if self.state.last_error else None

    def missing(self) -> list[str]:
        """Models of the manifest this worker has not loaded (any version of)."""
        wanted = self.manifest.models if self.manifest else {}
        return sorted(name for name in wanted if name not in self.models)

    def serving_now(self, name: str | None = None) -> ServingModel | None:
        """The named (else the default) model, outside any slot: for metadata."""
        return self.models.get(name if name is not None else self.default or "")

    @contextmanager
    def serving(self, name: str | None = None) -> Iterator[ServingModel | None]:
        """The named (else the default) model for one request, used in one of the worker's
        inference slots (``workers.inference_slots``); a swap meanwhile waits for the
        request to finish. None: no such model here."""
        with self.serving_chain(name) as (current, _):
            yield current

    @contextmanager
    def serving_chain(self, name: str | None = None) -> Iterator[tuple[ServingModel | None, ServingModel | None]]:
        """Like ``serving``, with the detector a chained model names (None when it has no
        chain or the detector is not loaded): both from one reading of the pool and both
        held until the request ends, so a swap of either never splits a request."""
        with self.slots.hold():
            models = self.models
            current = models.get(name if name is not None else self.default or "")
            if current is None:
                yield None, None
                return
            chain = current.model.spec.chain
            detector = models.get(chain.detector) if chain is not None else None
            with current.in_use(), detector.in_use() if detector is not None else nullcontext():
                yield current, detector

    def start(self) -> threading.Thread:
        """Load every published model before returning, so a worker (re)spawned by gunicorn
        accepts no request it cannot serve; then follow the manifest in the background."""
        StoreLayout(self.store).run.mkdir(parents=True, exist_ok=True)
        self.state.save(self.store)
        manifest = read_manifest(self.store)
        if manifest is not None:
            self._follow(manifest, locked=False)  # replaces nothing: no lock
        thread = threading.Thread(target=self._watch, name="manifest-watcher", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), RELOAD_NICENESS)
        manifest_file = StoreLayout(self.store).manifest
        last_stat = None
        while not self._stop.is_set():
            try:
                stat = manifest_file.stat()
                fingerprint = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            except FileNotFoundError:
                fingerprint = None
            if fingerprint is not None and fingerprint != last_stat:
                last_stat = fingerprint
                manifest = read_manifest(self.store)
                if manifest is not None:
                    self._follow(manifest, locked=bool(self.models))
            self._stop.wait(MANIFEST_POLL_SECONDS)

    def _pending(self, manifest: Manifest) -> list[ModelEntry]:
        """Entries to load here: the default first (it serves requests without a name)."""
        entries = sorted(manifest.models.values(), key=lambda e: (e.name != manifest.default, e.name))
        return [e for e in entries if e.generation not in (self._generation(e.name), self._failed.get(e.name))]

    def _generation(self, name: str) -> int | None:
        serving = self.models.get(name)
        return serving.manifest.generation if serving else None

    def _follow(self, manifest: Manifest, locked: bool) -> None:
        """Load what changed, one model at a time; then move the default and unload what
        left the manifest (never the default still serving while its successor failed)."""
        self.manifest = manifest
        for entry in self._pending(manifest):
            if self._stop.is_set():
                return
            if locked:
                self._load_one_at_a_time(entry.name)
            else:
                self._load(entry)
        latest = self.manifest
        if latest.default in self.models:
            self.default = latest.default
        for name in [n for n in self.models if n not in latest.models and n != self.default]:
            self._unload(name)
        self._note_chains()

    def _note_chains(self) -> None:
        """``twinfer_chain_unfed`` for every chained model served here: 1 while its detector
        is not (the pool lacks it, or it failed to load); a series a model (or its new
        version's chain) no longer names goes back to 0, so no alert outlives its cause."""
        chains = {name: s.model.spec.chain.detector for name, s in self.models.items() if s.model.spec.chain}
        for name, detector in self._chains.items():
            if chains.get(name) != detector:
                metrics.CHAIN_UNFED.labels(name, detector).set(0)
        for name, detector in chains.items():
            metrics.CHAIN_UNFED.labels(name, detector).set(0 if detector in self.models else 1)
        self._chains = chains

    def _load_one_at_a_time(self, name: str) -> None:
        while not self._stop.is_set():
            try:
                with self._lock.acquire(timeout=0.5):
                    manifest = read_manifest(self.store)  # it may have moved on while we waited
                    if manifest is not None:
                        self.manifest = manifest
                        entry = manifest.models.get(name)
                        if entry is not None and entry in self._pending(manifest):
                            self._load(entry)
                    return
            except Timeout:
                continue

    def _load(self, entry: ModelEntry) -> None:
        """Load and warm up ``entry``'s model, swap it in, drain and drop the old version."""
        started = time.time()
        try:
            model = load_model(entry.model_dir(self.store), entry.name, entry.version, self.options, entry.score_threshold)
            model.warm_up()
        except Exception as exc:  # the worker keeps serving the old version and says why
            self._failed[entry.name] = entry.generation
            message = f"{entry.name} {entry.version}: {exc}"
            log.error("worker %d could not load generation %d: %s", os.getpid(), entry.generation, message)
            self.state.record_error(entry.name, entry.generation, message)
            self.state.record_reload(entry.name, entry.generation, entry.version, started, time.time(), ok=False)
            self.state.save(self.store)
            metrics.MODEL_RELOADS.labels(entry.name, "failed").inc()
            return
        previous = self.models.get(entry.name)
        self.models = {**self.models, entry.name: ServingModel(model, entry, time.time())}
        if self.default is None or (self.manifest is not None and self.manifest.default == entry.name):
            self.default = entry.name  # inside the reload: a request after it gets the new default
        drained = self._drop(previous)
        finished = time.time()
        metrics.WORKER_MODEL.labels(entry.name, entry.version, str(entry.generation), entry.variant or "").set(1)
        metrics.WORKER_GENERATION.labels(entry.name).set(entry.generation)
        metrics.MODEL_RELOADS.labels(entry.name, "ok").inc()
        metrics.MODEL_RELOAD_SECONDS.labels(entry.name).observe(finished - started)
        self.state.record_loaded(entry.name, entry.generation, entry.version, finished,
                                 getattr(model.engine, "shared_weights", None))
        self.state.record_reload(entry.name, entry.generation, entry.version, started, finished, ok=True)
        self.state.save(self.store)
        log.info(
            "worker %d serves %s %s (generation %d), loaded in %.0f ms%s",
            os.getpid(), entry.name, entry.version, entry.generation, (finished - started) * 1e3,
            "" if drained else " (old version still busy after the drain timeout)",
        )

    def _drop(self, previous: ServingModel | None) -> bool:
        """Wait for the requests still on ``previous`` (already out of ``models``), free it."""
        if previous is None:
            return True
        drained = previous.wait_idle(DRAIN_TIMEOUT_SECONDS)
        old = previous.manifest
        metrics.WORKER_MODEL.labels(old.name, old.version, str(old.generation), old.variant or "").set(0)
        del previous
        gc.collect()
        return drained

    def _unload(self, name: str) -> None:
        previous = self.models.get(name)
        self.models = {k: v for k, v in self.models.items() if k != name}
        self._drop(previous)
        metrics.WORKER_GENERATION.labels(name).set(0)
        self.state.models.pop(name, None)
        self.state.save(self.store)
        log.info("worker %d unloaded %s (no longer in the manifest)", os.getpid(), name)
