"""The versioned model repository on local storage: ``store/models/<name>/<version>/``.

Versions arrive complete or not at all: a candidate is built in ``store/staging/`` (same
filesystem) and renamed into place, so a crash never leaves a half-written version.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from twinfer.store_layout import BUNDLE_RECORD, StoreLayout

_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RepositoryError(Exception):
    pass


def check_part(kind: str, value: str) -> str:
    """Names and versions become directory names: allow no separators or dot-dot."""
    if not _SAFE_PART.match(value) or ".." in value:
        raise RepositoryError(f"model {kind} {value!r} must be 1-128 of A-Z a-z 0-9 . _ - and not start with a dot")
    return value


def read_bundle_record(directory: Path) -> dict:
    """A version directory's bundle record (``BUNDLE_RECORD``); empty when absent or unreadable."""
    try:
        record = json.loads((directory / BUNDLE_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


class ModelRepository:
    def __init__(self, store: Path) -> None:
        self.store = store
        self.layout = StoreLayout(store)
        self.models = self.layout.models
        self.staging = self.layout.staging
        self.downloads = self.layout.downloads

    def prepare(self) -> None:
        """Create the layout and drop what a crash left behind: half-built candidates
        (partial downloads stay: they resume) and the previous run's worker state files.

        Before gunicorn starts no worker of this run exists, so every state file is stale:
        after a kill -9 or power cut nobody removed it, and in a restarted container its
        pid is soon reused by another process, which the rollout monitor would then wait
        for as a worker that never loads the new generation."""
        self.models.mkdir(parents=True, exist_ok=True)
        self.downloads.mkdir(parents=True, exist_ok=True)
        for leftover in self.staging.iterdir():
            if leftover != self.downloads:
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
        for stale in self.layout.worker_states.glob("*.json"):
            stale.unlink(missing_ok=True)

    def download_path(self, name: str, version: str) -> Path:
        """``downloads/<name>/<version>.part``: one folder per model, whose lane alone touches it."""
        folder = self.downloads / check_part("name", name)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{check_part('version', version)}.part"

    def drop_downloads_except(self, name: str, keep: Path | None) -> list[Path]:
        """Garbage-collect ``name``'s partial downloads of versions no longer desired (and
        files earlier releases left directly in ``downloads``)."""
        removed = []
        folder = self.downloads / check_part("name", name)
        leftovers = [p for p in self.downloads.iterdir() if p.is_file()]
        for path in [*(folder.iterdir() if folder.is_dir() else ()), *leftovers]:
            if keep is None or not path.name.startswith(keep.name):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def tidy_downloads(self, name: str) -> None:
        """Remove ``name``'s download folder once nothing is left in it."""
        try:
            (self.downloads / check_part("name", name)).rmdir()
        except OSError:  # not empty (a download to resume), or gone
            pass

    def version_dir(self, name: str, version: str) -> Path:
        return self.models / check_part("name", name) / check_part("version", version)

    def relative(self, path: Path) -> str:
        """Manifest paths are relative to the store, so the store can be mounted anywhere."""
        return path.relative_to(self.store).as_posix()

    def has(self, name: str, version: str) -> bool:
        return self.version_dir(name, version).is_dir()

    def bundle_record(self, name: str, version: str) -> dict:
        """What staging recorded of the bundle a version came from (SHA-256, MD5, size, file
        name); empty when there is none (the bundled default was not installed from a bundle)."""
        return read_bundle_record(self.version_dir(name, version))

    def remove_version(self, name: str, version: str) -> None:
        """Delete a staged version that serves nowhere (the caller checked the manifest)."""
        shutil.rmtree(self.version_dir(name, version), ignore_errors=True)

    def new_staging_dir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix + ".", dir=self.staging))

    def promote(self, candidate: Path, name: str, version: str) -> Path:
        """Rename a validated staging directory into the repository (atomic)."""
        target = self.version_dir(name, version)
        if target.exists():
            raise RepositoryError(f"{name} {version} is already in the repository")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(candidate, target)
        return target

    def versions(self) -> list[tuple[str, str, Path]]:
        """Every staged (name, version, directory), oldest first."""
        found = [
            (name_dir.name, version_dir.name, version_dir)
            for name_dir in self.models.iterdir()
            if name_dir.is_dir()
            for version_dir in name_dir.iterdir()
            if version_dir.is_dir()
        ]
        return sorted(found, key=lambda item: item[2].stat().st_mtime)

    def prune(self, keep: int, protect: set[Path]) -> list[Path]:
        """Delete each model's oldest versions beyond ``keep`` of that model, never one in
        ``protect`` (the active and previous versions stay for instant rollback)."""
        by_name: dict[str, list[Path]] = {}
        for name, _, path in self.versions():
            by_name.setdefault(name, []).append(path)
        removed = []
        for versions in by_name.values():
            removable = [p for p in versions if p not in protect]
            removed += removable[:max(0, len(versions) - keep)]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
            if not any(path.parent.iterdir()):
                path.parent.rmdir()
        return removed

    def copy_into_staging(self, source: Path, prefix: str) -> Path:
        candidate = self.new_staging_dir(prefix)
        for item in source.iterdir():
            if item.is_file():
                shutil.copy2(item, candidate / item.name)
        return candidate
