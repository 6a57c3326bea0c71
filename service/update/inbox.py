"""Desired documents in, one at a time out.

The twin calls in from its own thread, with a full document (at connect) or a patch; the
updater takes the merged document when it is free. A document handled to a final outcome
is remembered by its fingerprint in ``updater.json`` (per model: ``StoreLayout.updater_state_of``), so the same
document delivered again by a reconnect or a restart does nothing, while one interrupted
mid-download is taken up again. A newer document that asks for another model cancels the
work on the older one (``cancel``); a document whose handling must be tried again later
(a flaky link, a closed window) comes out again after its delay, or sooner when a new one
arrives.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

from service.update.desired import DesiredError, DesiredModel, merge_patch, parse_desired
from twinfer.manifest import write_atomic

log = logging.getLogger("twinfer.updater")


TWIN_METADATA = ("$version", "$metadata")  # what IoT Hub adds to a desired document


def fingerprint(document: dict) -> str:
    """A hash of the content, not the twin's ``$version``: a lane's document is its part of
    the desired document, and a patch to another model's part (a new ``$version``) must not
    make this lane handle its own part again (a failed download retried, say)."""
    content = {k: v for k, v in document.items() if k not in TWIN_METADATA}
    return "sha256:" + hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _model_of(document: dict) -> DesiredModel | None:
    try:
        return parse_desired(document).model
    except DesiredError:
        return None


class DesiredInbox:
    def __init__(self) -> None:
        self._desired: dict = {}
        self._inputs = 0
        self._taken = 0
        self._retry_at: float | None = None
        self._closed = False
        self._working_on: DesiredModel | None = None
        self._cond = threading.Condition()
        self.cancel = threading.Event()  # set: drop the work on the current document

    def put(self, document: dict, full: bool) -> None:
        """Twin callback (any thread): merge, and cancel work the new document replaces."""
        with self._cond:
            self._desired = dict(document) if full else merge_patch(self._desired, document)
            if "$version" in document:
                self._desired["$version"] = document["$version"]
            self._inputs += 1
            if self._working_on is not None and _model_of(self._desired) != self._working_on:
                log.info("desired model changed during an update; cancelling it")
                self.cancel.set()
            self._cond.notify_all()

    def take(self) -> dict | None:
        """Block until there is a new document, or the last one's retry is due; None once closed."""
        with self._cond:
            while not self._closed and self._inputs == self._taken and (
                self._retry_at is None or time.monotonic() < self._retry_at
            ):
                self._cond.wait(None if self._retry_at is None else max(0.0, self._retry_at - time.monotonic()))
            if self._closed:
                return None
            self._taken, self._retry_at = self._inputs, None
            self.cancel.clear()
            return dict(self._desired)

    def retry_in(self, seconds: float) -> None:
        """Hand the last taken document out again after ``seconds`` (or with the next one)."""
        with self._cond:
            self._retry_at = time.monotonic() + seconds

    def working_on(self, model: DesiredModel | None) -> None:
        """The model the current work brings in (None: idle); a document asking for another cancels it."""
        with self._cond:
            self._working_on = model

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self.cancel.set()
            self._cond.notify_all()


class HandledRecord:
    """``updater.json``: the fingerprint of the last document handled to a final outcome,
    and that outcome (``service.update.status.ModelStatus.outcome``)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.fingerprint, self.outcome = self._load()

    def _load(self) -> tuple[str | None, dict]:
        try:
            saved = json.loads(self._path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None, {}
        if not isinstance(saved, dict):
            return None, {}
        outcome = saved.get("outcome")
        return saved.get("handled"), (outcome if isinstance(outcome, dict) else {})

    def save(self, mark: str, outcome: dict) -> None:
        self.fingerprint, self.outcome = mark, outcome
        self._path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path, json.dumps({"handled": mark, "outcome": outcome}).encode())
