"""Holds the model this worker serves and loads it off the request path.

Requests read ``holder.current`` once and use that object to the end, so replacing the
reference is atomic for them; loading runs in a background thread so ``/healthz``
answers (and ``/readyz`` says 503) while a model loads.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from workers import metrics
from workers.engines.base import EngineOptions
from workers.loader import load_model
from workers.manifest import Manifest, read_manifest
from workers.pipeline import DetectionModel

log = logging.getLogger("twinfer.worker")
MANIFEST_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class ServingModel:
    model: DetectionModel
    manifest: Manifest
    loaded_at: float


class ModelHolder:
    def __init__(self, store: Path, options: EngineOptions) -> None:
        self.store = store
        self.options = options
        self.current: ServingModel | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._load_when_published, name="model-loader", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _load_when_published(self) -> None:
        """Wait for a manifest (gunicorn may start before the first publish), then load it."""
        while not self._stop.is_set():
            manifest = read_manifest(self.store)
            if manifest is not None:
                self.load(manifest)
                return
            self._stop.wait(MANIFEST_POLL_SECONDS)

    def load(self, manifest: Manifest) -> None:
        """Load and warm up ``manifest``'s model, then make it current."""
        started = time.perf_counter()
        try:
            model = load_model(
                manifest.model_dir(self.store), manifest.name, manifest.version, self.options, manifest.score_threshold
            )
            model.warm_up()
        except Exception as exc:  # a worker must keep running to report the error
            self.last_error = f"{manifest.name} {manifest.version}: {exc}"
            log.error("worker %d could not load %s", os.getpid(), self.last_error)
            return
        previous = self.current
        self.current = ServingModel(model, manifest, time.time())
        self.last_error = None
        if previous is not None:
            metrics.WORKER_MODEL.labels(previous.manifest.name, previous.manifest.version, str(previous.manifest.generation)).set(0)
        metrics.WORKER_MODEL.labels(manifest.name, manifest.version, str(manifest.generation)).set(1)
        log.info(
            "worker %d serves %s %s (generation %d), loaded in %.0f ms",
            os.getpid(), manifest.name, manifest.version, manifest.generation, (time.perf_counter() - started) * 1e3,
        )
