"""The manifest: one small JSON file in the store naming every model the workers serve.

The supervisor publishes; workers read. Each model has an entry (version, directory,
format, decoder, its own generation); one of them is the **default** model (the twin's
``model`` key, or the bundled default), served where a request names no model. Every
publish or removal hands out the next generation number, pool-wide, so a generation
names one publish of one model and workers and the rollout monitor can tell which
model changed. Writes take a ``filelock`` lock (so two publishers never both hand out
the same generation) and replace the file atomically (temp file, fsync, rename, fsync of
the directory), so a reader sees the old or the new document, never half of one, even
across a power cut.

The store outlives the container: a manifest an older release wrote (one model at the
top level) reads as a pool of that one model, its default.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from filelock import FileLock

from twinfer.store_layout import MANIFEST_FILE, StoreLayout

MANIFEST_FORMAT = 2  # 1: the single-model document of earlier releases


class ManifestError(ValueError):
    """A publish or removal the manifest refuses (e.g. removing the default model)."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    version: str
    directory: str  # relative to the store, so the store can move (a volume mount)
    format: str  # "onnx" or "tflite"
    decoder: str
    generation: int  # the publish that put this version here
    published_at: float
    score_threshold: float | None = None  # the twin's inference setting, over the bundle's
    variant: str | None = None  # which of the twin's model.variants serves (None: the model had none)

    def model_dir(self, store: Path) -> Path:
        return store / self.directory


@dataclass(frozen=True)
class Manifest:
    generation: int  # the last number handed out (publish or removal)
    default: str | None
    models: dict[str, ModelEntry] = field(default_factory=dict)

    @property
    def default_entry(self) -> ModelEntry | None:
        return self.models.get(self.default) if self.default else None

    def entry(self, name: str | None = None) -> ModelEntry | None:
        """The named model's entry; the default model's when ``name`` is None."""
        return self.default_entry if name is None else self.models.get(name)


def _lock(store: Path) -> FileLock:
    return FileLock(str(StoreLayout(store).manifest_lock), timeout=30)


def _entry(raw: dict) -> ModelEntry:
    known = set(ModelEntry.__dataclass_fields__)
    return ModelEntry(**{k: v for k, v in raw.items() if k in known})


def read_manifest(store: Path) -> Manifest | None:
    """The published manifest, or None before the first publish."""
    try:
        raw = json.loads(StoreLayout(store).manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    if "models" not in raw:  # format 1: one model at the top level
        entry = _entry(raw)
        return Manifest(entry.generation, entry.name, {entry.name: entry})
    models = {name: _entry(value) for name, value in raw["models"].items()}
    return Manifest(int(raw["generation"]), raw.get("default"), models)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see either the old or the new bytes."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _temp_files(store: Path) -> list[Path]:
    """What ``write_atomic`` leaves behind when its writer dies between write and rename."""
    return list(store.glob("." + MANIFEST_FILE + ".*.tmp"))


def _drop_temp_files(store: Path) -> list[Path]:
    """Under the lock no other publisher is writing, so every manifest temp file is a
    leftover of a crash (kill -9, power cut): readers never look at them, but they would
    pile up in the store."""
    removed = []
    for path in _temp_files(store):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def remove_stale_temp_files(store: Path) -> list[Path]:
    """Drop manifest temp files a crashed publisher left (the supervisor calls it at start)."""
    if not _temp_files(store):
        return []
    with _lock(store):
        return _drop_temp_files(store)


def _write(store: Path, manifest: Manifest) -> None:
    document = {
        "format": MANIFEST_FORMAT, "generation": manifest.generation, "default": manifest.default,
        "models": {name: asdict(entry) for name, entry in sorted(manifest.models.items())},
    }
    write_atomic(StoreLayout(store).manifest, json.dumps(document, indent=2).encode())


def publish(
    store: Path,
    name: str,
    version: str,
    directory: str,
    format: str,
    decoder: str,
    score_threshold: float | None = None,
    *,
    default: bool = False,
    admit: Callable[[Manifest | None], None] | None = None,
    variant: str | None = None,
) -> ModelEntry:
    """Make a staged version the one served under ``name``: the next generation, written
    atomically under the lock. ``default``: this model becomes the default one, and the
    entry of a previous default of another name goes (the twin's ``model`` naming another
    model replaces it, as it always has); the first model published is the default either
    way. ``admit`` sees the manifest under the lock and raises to refuse the publish (the
    memory budget: two models published at once cannot both squeeze in). ``variant``: which
    of the twin's variants of the model this is."""
    with _lock(store):
        _drop_temp_files(store)
        current = read_manifest(store)
        if admit is not None:
            admit(current)
        generation = (current.generation + 1) if current else 1
        entry = ModelEntry(name, version, directory, format, decoder, generation, time.time(), score_threshold, variant)
        models = dict(current.models) if current else {}
        previous_default = current.default if current else None
        if default and previous_default not in (None, name):
            models.pop(previous_default, None)
        models[name] = entry
        _write(store, Manifest(generation, name if default or previous_default is None else previous_default, models))
        return entry


def unpublish(store: Path, name: str) -> Manifest:
    """Take ``name`` out of the pool (the workers unload it); the default model stays."""
    with _lock(store):
        _drop_temp_files(store)
        current = read_manifest(store)
        if current is None or name not in current.models:
            raise ManifestError(f"{name!r} is not in the manifest")
        if name == current.default:
            raise ManifestError(f"{name!r} is the default model; the twin's model key names another to replace it")
        models = {k: v for k, v in current.models.items() if k != name}
        manifest = Manifest(current.generation + 1, current.default, models)
        _write(store, manifest)
        return manifest


def read_default(store: Path) -> ModelEntry | None:
    """The default model's entry (None before the first publish)."""
    manifest = read_manifest(store)
    return manifest.default_entry if manifest else None
