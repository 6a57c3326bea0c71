"""Rollback protection: the highest version ever activated per model name (``store/versions.json``).

A version below it is refused unless the twin says ``model.allow_downgrade: true``, so a
replayed or stale desired document cannot take a device back to a model it has left. The
updater and the operator commands that write the local twin ask the same question here.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

from twinfer.manifest import write_atomic
from twinfer.store_layout import StoreLayout


def _numeric_version(version: str) -> tuple[int, ...] | None:
    parts = version.split(".")
    if not all(part.isdigit() for part in parts):
        return None
    numbers = [int(part) for part in parts]
    while len(numbers) > 1 and numbers[-1] == 0:  # 1.0 == 1.0.0
        numbers.pop()
    return tuple(numbers)


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1: numerically by dotted components (``1.10 > 1.9``, ``1.0 == 1.0.0``)
    when both are dotted numbers, else as strings."""
    key_a, key_b = _numeric_version(a), _numeric_version(b)
    if key_a is not None and key_b is not None:
        return (key_a > key_b) - (key_a < key_b)
    return (a > b) - (a < b)


class RollbackGuard:
    _write_lock = threading.Lock()  # every model's lane writes the one file: read, raise, write, one at a time

    def __init__(self, store: Path) -> None:
        self._path = StoreLayout(store).versions
        self._highest = self._load()

    def _load(self) -> dict[str, str]:
        try:
            raw = json.loads(self._path.read_text()).get("highest_activated", {})
        except (FileNotFoundError, ValueError, AttributeError):
            return {}
        if not isinstance(raw, dict):
            return {}
        return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}

    def refusal(self, name: str, version: str, allow_downgrade: bool, version_is_digest: bool = False) -> str | None:
        """Why ``version`` of ``name`` may not activate, or None when it may."""
        if allow_downgrade or version_is_digest:  # pinned on purpose, or no order to compare
            return None
        highest = self._highest.get(name)
        if highest is not None and compare_versions(version, highest) < 0:
            return (f"{name} {version} is lower than {highest}, the highest version of {name} this device has "
                    f"activated; to roll back on purpose set model.allow_downgrade: true")
        return None

    def note_activated(self, name: str, version: str) -> None:
        """Raise the high-water mark of ``name`` (never lower it: an allowed downgrade keeps it)."""
        with self._write_lock:
            self._highest = self._load()  # other lanes' guards may have raised their models'
            highest = self._highest.get(name)
            if highest is not None and compare_versions(version, highest) <= 0:
                return
            self._highest = {**self._highest, name: version}
            write_atomic(self._path, json.dumps({"highest_activated": self._highest}, indent=1).encode())
