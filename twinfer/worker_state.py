"""Each worker's own account of what it serves, in a small JSON file the supervisor reads.

``store/run/workers/<pid>.json``: pid, each model it serves (generation, version,
loaded-at, shared weights), its last load error and the recent reload intervals. The supervisor decides from these when a rollout is
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
    models: dict[str, dict] = field(default_factory=dict)  # name -> {"generation", "version", "loaded_at", "shared_weights"}
    last_error: dict | None = None  # {"model", "generation", "message", "at"}
    reloads: list[dict] = field(default_factory=list)  # {"model", "generation", "version", "started", "finished", "ok"}

    def generation_of(self, name: str) -> int | None:
        """The generation of ``name`` this worker serves (None: not loaded)."""
        loaded = self.models.get(name)
        return loaded["generation"] if loaded else None

    def record_loaded(self, name: str, generation: int, version: str, loaded_at: float, shared: bool | None) -> None:
        self.models[name] = {"generation": generation, "version": version, "loaded_at": loaded_at,
                             "shared_weights": shared}

    def save(self, store: Path) -> None:
        path = state_path(store, self.pid)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(asdict(self)).encode())

    def record_reload(self, name: str, generation: int, version: str, started: float, finished: float, ok: bool) -> None:
        entry = {"model": name, "generation": generation, "version": version, "started": started, "finished": finished,
                 "ok": ok}
        self.reloads = (self.reloads + [entry])[-KEPT_RELOADS:]

    def record_error(self, name: str, generation: int, message: str) -> None:
        self.last_error = {"model": name, "generation": generation, "message": message, "at": time.time()}


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
            known = set(WorkerState.__dataclass_fields__)
            states.append(WorkerState(**{k: v for k, v in raw.items() if k in known}))
    return sorted(states, key=lambda s: s.pid)


def remove_state(store: Path, pid: int) -> None:
    state_path(store, pid).unlink(missing_ok=True)
