"""Where everything lives in the model store (README "Model store"): every file and
directory name of the store, in one place for both processes (the supervisor writes the
store, the workers read it and keep their state in it).

The store is a volume that outlives the container, so these names are an on-disk format:
a new release reads the store an older one left.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from twinfer.settings_table import read

MANIFEST_FILE = "manifest.json"
# In a version directory, models/<name>/<version>/, beside the model's own files:
BUNDLE_FILE = ".twinfer-bundle"  # the bundle's bytes: the base of the next delta
BUNDLE_RECORD = ".twinfer-bundle.json"  # the bundle's SHA-256 and MD5
HOST_DIR = ".host"  # artifacts built on this device for its CPU (twinfer.engines.artifacts)


def store_from_env(environ: Mapping[str, str] = os.environ) -> Path:
    """The store every process of one service shares: TWINFER_STORE, made absolute."""
    return read("TWINFER_STORE", environ)


@dataclass(frozen=True)
class StoreLayout:
    root: Path

    @property
    def manifest(self) -> Path:
        """The active model, published by the supervisor (twinfer.manifest)."""
        return self.root / MANIFEST_FILE

    @property
    def manifest_lock(self) -> Path:
        return self.root / (MANIFEST_FILE + ".lock")

    @property
    def models(self) -> Path:
        """``models/<name>/<version>/``: complete, validated versions only."""
        return self.root / "models"

    def version_dir(self, name: str, version: str) -> Path:
        return self.models / name / version

    @property
    def staging(self) -> Path:
        """Candidates being built, renamed into ``models`` once validated."""
        return self.root / "staging"

    @property
    def downloads(self) -> Path:
        """Partial downloads (``<name>-<version>.part`` and sidecars), resumed across restarts."""
        return self.staging / "downloads"

    @property
    def twin(self) -> Path:
        """The local twin of the embedded default (service.twin.local)."""
        return self.root / "twin"

    def updater_state_of(self, lane: str | None) -> Path:
        """The last desired document a model's lane handled, and its outcome: the default
        model's in ``updater.json``, each other model's in ``updater/<name>.json``."""
        return self.root / "updater.json" if lane is None else self.root / "updater" / f"{lane}.json"

    @property
    def versions(self) -> Path:
        """The highest version activated per model name (rollback protection)."""
        return self.root / "versions.json"

    @property
    def run(self) -> Path:
        """What lives only while the service runs."""
        return self.root / "run"

    @property
    def metrics(self) -> Path:
        """prometheus-client's multiprocess files, wiped at every start."""
        return self.run / "prometheus"

    @property
    def worker_states(self) -> Path:
        """``<pid>.json`` per live worker (twinfer.worker_state)."""
        return self.run / "workers"

    @property
    def reload_lock(self) -> Path:
        """Held by the one worker of the pool that is reloading."""
        return self.run / "reload.lock"
