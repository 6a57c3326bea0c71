"""Holds the model this worker serves, and swaps it without failing a request.

A background thread watches the manifest (a stat every 100 ms). When the generation
changes, the worker takes the pool-wide reload lock (so one worker at a time loads: at
most one extra model copy in the pool and one worker's CPU spent on loading), loads and
warms up the new model while the old one keeps serving, swaps the reference, waits for
requests still running on the old model, drops it, records its state and releases the
lock. A model that fails to load is not retried for that generation; the old one keeps
serving and the error is recorded for the supervisor, which rolls the manifest back.
"""
from __future__ import annotations

import gc
import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from twinfer.engines.base import EngineOptions
from twinfer.loader import load_model
from twinfer.manifest import Manifest, read_manifest
from twinfer.pipeline import DetectionModel
from twinfer.store_layout import StoreLayout
from twinfer.worker_state import WorkerState
from workers import metrics
from workers.inference_slots import InferenceSlots

log = logging.getLogger("twinfer.worker")
MANIFEST_POLL_SECONDS = 0.1
DRAIN_TIMEOUT_SECONDS = 60.0


class ServingModel:
    """A loaded model and the manifest entry it came from, with its in-flight count."""

    def __init__(self, model: DetectionModel, manifest: Manifest, loaded_at: float) -> None:
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
        self.current: ServingModel | None = None
        self.state = WorkerState(pid=os.getpid())
        self._failed_generation: int | None = None
        self._stop = threading.Event()
        self._lock = FileLock(str(StoreLayout(store).reload_lock))

    @property
    def last_error(self) -> str | None:
        return self.state.last_error["message"] if self.state.last_error else None

    @contextmanager
    def serving(self) -> Iterator[ServingModel | None]:
        """The model for one request, used in one of the worker's inference slots
        (``workers.inference_slots``); a swap meanwhile waits for the request to finish."""
        with self.slots.hold():
            current = self.current
            if current is None:
                yield None
                return
            with current.in_use():
                yield current

    def start(self) -> threading.Thread:
        """Load the published model before returning, so a worker (re)spawned by gunicorn
        accepts no request it cannot serve; then follow the manifest in the background."""
        StoreLayout(self.store).run.mkdir(parents=True, exist_ok=True)
        self.state.save(self.store)
        manifest = read_manifest(self.store)
        if manifest is not None:
            self._load(manifest)
        thread = threading.Thread(target=self._watch, name="manifest-watcher", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        """Follow the manifest; the first load (if ``start`` had none) takes no lock: it
        replaces nothing."""
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
                if manifest is not None and self._wants(manifest):
                    if self.current is None:
                        self._load(manifest)
                    else:
                        self._reload_one_at_a_time()
            self._stop.wait(MANIFEST_POLL_SECONDS)

    def _wants(self, manifest: Manifest) -> bool:
        current = self.current.manifest.generation if self.current else None
        return manifest.generation not in (current, self._failed_generation)

    def _reload_one_at_a_time(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock.acquire(timeout=0.5):
                    manifest = read_manifest(self.store)  # it may have moved on while we waited
                    if manifest is not None and self._wants(manifest):
                        self._load(manifest)
                    return
            except Timeout:
                continue

    def _load(self, manifest: Manifest) -> None:
        """Load and warm up ``manifest``'s model, swap it in, drain and drop the old one."""
        started = time.time()
        try:
            model = load_model(
                manifest.model_dir(self.store), manifest.name, manifest.version, self.options, manifest.score_threshold
            )
            model.warm_up()
        except Exception as exc:  # the worker keeps serving the old model and says why
            self._failed_generation = manifest.generation
            message = f"{manifest.name} {manifest.version}: {exc}"
            log.error("worker %d could not load generation %d: %s", os.getpid(), manifest.generation, message)
            self.state.record_error(manifest.generation, message)
            self.state.record_reload(manifest.generation, manifest.version, started, time.time(), ok=False)
            self.state.save(self.store)
            metrics.MODEL_RELOADS.labels("failed").inc()
            return
        previous, self.current = self.current, ServingModel(model, manifest, time.time())
        drained = previous is None or previous.wait_idle(DRAIN_TIMEOUT_SECONDS)
        if previous is not None:
            metrics.WORKER_MODEL.labels(previous.manifest.name, previous.manifest.version, str(previous.manifest.generation)).set(0)
            del previous
            gc.collect()
        finished = time.time()
        metrics.WORKER_MODEL.labels(manifest.name, manifest.version, str(manifest.generation)).set(1)
        metrics.WORKER_GENERATION.set(manifest.generation)
        metrics.MODEL_RELOADS.labels("ok").inc()
        metrics.MODEL_RELOAD_SECONDS.observe(finished - started)
        self.state.generation, self.state.name, self.state.version = manifest.generation, manifest.name, manifest.version
        self.state.loaded_at = finished
        self.state.shared_weights = getattr(model.engine, "shared_weights", None)
        self.state.record_reload(manifest.generation, manifest.version, started, finished, ok=True)
        self.state.save(self.store)
        log.info(
            "worker %d serves %s %s (generation %d), loaded in %.0f ms%s",
            os.getpid(), manifest.name, manifest.version, manifest.generation, (finished - started) * 1e3,
            "" if drained else " (old model still busy after the drain timeout)",
        )
