"""The embedded default twin: two JSON files in the store, no cloud.

``desired.json`` holds desired properties exactly as a module twin would (operators edit
it or use ``python -m service set-model``); the supervisor polls it and delivers the
whole document whenever it changes. Reported properties are merged into
``reported.json``, written atomically.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from service.twin.base import DesiredHandler, TwinError
from service.update.desired import merge_patch
from twinfer.manifest import write_atomic

log = logging.getLogger("twinfer.twin")
DESIRED_FILE = "desired.json"
REPORTED_FILE = "reported.json"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


class LocalTwin:
    kind = "local"

    def __init__(self, directory: Path, poll_seconds: float = 0.5) -> None:
        self.directory = directory
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def desired_path(self) -> Path:
        return self.directory / DESIRED_FILE

    @property
    def reported_path(self) -> Path:
        return self.directory / REPORTED_FILE

    def start(self, on_desired: DesiredHandler) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._watch, args=(on_desired,), name="local-twin", daemon=True)
        self._thread.start()

    def _watch(self, on_desired: DesiredHandler) -> None:
        """Deliver the document at start and after every change of its bytes."""
        last: bytes | None = None
        while not self._stop.is_set():
            try:
                raw = self.desired_path.read_bytes()
            except FileNotFoundError:
                raw = b"{}"
            if raw != last:
                last = raw
                try:
                    document = json.loads(raw)
                except (ValueError, RecursionError) as exc:  # JSONDecodeError, absurd nesting
                    log.error("%s is not valid JSON (%s); keeping the current model", self.desired_path, exc)
                    document = {"$invalid": str(exc)}
                on_desired(document if isinstance(document, dict) else {"$invalid": "not an object"}, True)
            self._stop.wait(self.poll_seconds)

    def report(self, patch: dict) -> None:
        with self._lock:
            try:
                merged = merge_patch(read_json(self.reported_path), patch)
                self.directory.mkdir(parents=True, exist_ok=True)
                write_atomic(self.reported_path, json.dumps(merged, indent=2, sort_keys=True).encode())
            except OSError as exc:
                raise TwinError(f"cannot write {self.reported_path}: {exc}") from exc

    def send_event(self, output: str, payload: dict) -> None:
        log.info("model-ready message for output %s: %s", output, json.dumps(payload))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
