"""The manifest: one small JSON file in the store naming the model every worker serves.

The supervisor publishes; workers read. Writes take a ``filelock`` lock (so two
publishers never both hand out the same generation) and replace the file atomically
(temp file, fsync, rename, fsync of the directory), so a reader sees the old or the
new document, never half of one, even across a power cut.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from twinfer.store_layout import MANIFEST_FILE, StoreLayout


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    directory: str  # relative to the store, so the store can move (a volume mount)
    format: str  # "onnx" or "tflite"
    decoder: str
    generation: int
    published_at: float
    score_threshold: float | None = None  # the twin's inference setting, over the bundle's


    def model_dir(self, store: Path) -> Path:
        return store / self.directory


def _lock(store: Path) -> FileLock:
    return FileLock(str(StoreLayout(store).manifest_lock), timeout=30)


def read_manifest(store: Path) -> Manifest | None:
    """The published manifest, or None before the first publish."""
    try:
        raw = json.loads(StoreLayout(store).manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    known = {f for f in Manifest.__dataclass_fields__}
    return Manifest(**{k: v for k, v in raw.items() if k in known})


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


def publish(
    store: Path,
    name: str,
    version: str,
    directory: str,
    format: str,
    decoder: str,
    score_threshold: float | None = None,
) -> Manifest:
    """Make a staged model the active one: generation + 1, written atomically under the lock."""
    with _lock(store):
        _drop_temp_files(store)
        current = read_manifest(store)
        manifest = Manifest(
            name=name,
            version=version,
            directory=directory,
            format=format,
            decoder=decoder,
            generation=(current.generation + 1) if current else 1,
            published_at=time.time(),
            score_threshold=score_threshold,
        )
        write_atomic(StoreLayout(store).manifest, json.dumps(asdict(manifest), indent=2).encode())
        return manifest
