"""The versioned model repository on local storage: ``store/models/<name>/<version>/``.

Versions arrive complete or not at all: a candidate is built in ``store/staging/`` (same
filesystem) and renamed into place, so a crash never leaves a half-written version.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RepositoryError(Exception):
    pass


def check_part(kind: str, value: str) -> str:
    """Names and versions become directory names: allow no separators or dot-dot."""
    if not _SAFE_PART.match(value) or ".." in value:
        raise RepositoryError(f"model {kind} {value!r} must be 1-128 of A-Z a-z 0-9 . _ - and not start with a dot")
    return value


class ModelRepository:
    def __init__(self, store: Path) -> None:
        self.store = store
        self.models = store / "models"
        self.staging = store / "staging"

    def prepare(self) -> None:
        self.models.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def version_dir(self, name: str, version: str) -> Path:
        return self.models / check_part("name", name) / check_part("version", version)

    def relative(self, path: Path) -> str:
        """Manifest paths are relative to the store, so the store can be mounted anywhere."""
        return path.relative_to(self.store).as_posix()

    def has(self, name: str, version: str) -> bool:
        return self.version_dir(name, version).is_dir()

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

    def copy_into_staging(self, source: Path, prefix: str) -> Path:
        candidate = self.new_staging_dir(prefix)
        for item in source.iterdir():
            if item.is_file():
                shutil.copy2(item, candidate / item.name)
        return candidate
