"""Reported properties, coalesced and throttled.

IoT Hub throttles twin updates per unit, and a device on a metered link should not
spend bytes on every progress tick: updates merge into one pending patch that is sent
at most once per ``min_interval`` seconds, by a background thread that retries (with
backoff) when the twin is unreachable, so reporting never blocks the update pipeline.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from service.twin.base import TwinError, TwinSource

log = logging.getLogger("twinfer.report")


class Reporter:
    def __init__(
        self, twin: TwinSource, min_interval: float = 2.0, max_backoff: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` times the interval and the backoff (tests pass one they move by hand;
        the thread re-reads it whenever an update wakes it)."""
        self._twin = twin
        self._clock = clock
        self._min_interval = min_interval
        self._max_backoff = max_backoff
        self._pending: dict = {}
        self._cond = threading.Condition()
        self._closed = False
        self._in_flight = False
        self._not_before = 0.0
        self._thread = threading.Thread(target=self._run, name="twin-reporter", daemon=True)
        self._thread.start()

    def update(self, patch: dict) -> None:
        """Queue a reported-properties patch (merged into whatever is still pending)."""
        with self._cond:
            self._pending = merge_patch_keep_nulls(self._pending, patch)
            self._cond.notify_all()

    @property
    def sending(self) -> bool:
        """A patch is with the twin now (its outcome, and the next send time, not yet known)."""
        with self._cond:
            return self._in_flight

    def flush(self, timeout: float = 10.0) -> bool:
        """Send what is queued now, and wait until it has gone (shutdown, tests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._not_before = 0.0
            self._cond.notify_all()
            while self._pending or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _next_patch(self) -> dict | None:
        """Block until a patch may be sent; None once closed with nothing left."""
        with self._cond:
            while not self._closed and (not self._pending or self._clock() < self._not_before):
                self._cond.wait(None if not self._pending else max(0.0, self._not_before - self._clock()))
            if not self._pending:
                return None
            patch, self._pending, self._in_flight = self._pending, {}, True
            return patch

    def _run(self) -> None:
        backoff = 1.0
        while (patch := self._next_patch()) is not None:
            try:
                self._twin.report(patch)
                delay, failed = self._min_interval, None
                backoff = 1.0
            except TwinError as exc:
                log.warning("reporting to the twin failed (%s); retrying in %.0f s", exc, backoff)
                delay, failed = backoff, patch
                backoff = min(self._max_backoff, backoff * 2)
            with self._cond:
                if failed is not None:
                    self._pending = merge_patch_keep_nulls(failed, self._pending)
                self._not_before = self._clock() + delay
                self._in_flight = False
                self._cond.notify_all()
                if failed is not None and self._closed:
                    return


def merge_patch_keep_nulls(pending: dict, patch: dict) -> dict:
    """Combine two patches into one: later values win, nested objects merge, and a null
    (a deletion the twin must see) is kept rather than applied."""
    merged = dict(pending)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_patch_keep_nulls(merged[key], value)
        else:
            merged[key] = value
    return merged

