"""Each worker's own account of what it serves, in a small JSON file the supervisor reads.

``store/run/workers/<pid>.json``: pid, generation, version, loaded-at, last error and
the recent reload intervals. The supervisor decides from these when a rollout is
complete (every live worker on the new generation) or failed (a worker could not load
it); gunicorn's ``child_exit`` hook removes a dead worker's file.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from twinfer.manifest import write_atomic
from twinfer.store_layout import StoreLayout

KEPT_RELOADS = 50


def state_path(store: Path, pid: int) -> Path:
    return StoreLayout(store).worker_states / f"{pid}.json"


@dataclass
class WorkerState:
    pid: int
    generation: int | None = None
    name: str | None = None
    version: str | None = None
    loaded_at: float | None = None
    shared_weights: bool | None = None
    last_error: dict | None = None  # {"generation", "message", "at"}
    reloads: list[dict] = field(default_factory=list)  # {"generation", "version", "started", "finished", "ok"}

    def save(self, store: Path) -> None:
        path = state_path(store, self.pid)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(asdict(self)).encode())

    def record_reload(self, generation: int, version: str, started: float, finished: float, ok: bool) -> None:
        entry = {"generation": generation, "version": version, "started": started, "finished": finished, "ok": ok}
        self.reloads = (self.reloads + [entry])[-KEPT_RELOADS:]

    def record_error(self, generation: int, message: str) -> None:
        self.last_error = {"generation": generation, "message": message, "at": time.time()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_states(store: Path) -> list[WorkerState]:
    """States of live workers only (a file whose process is gone is ignored)."""
    states = []
    directory = StoreLayout(store).worker_states
    if not directory.is_dir():
        return states
    for path in directory.glob("*.json"):
        try:
            raw = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if _alive(raw.get("pid", -1)):
            states.append(WorkerState(**raw))
    return sorted(states, key=lambda s: s.pid)


def remove_state(store: Path, pid: int) -> None:
    state_path(store, pid).unlink(missing_ok=True)
