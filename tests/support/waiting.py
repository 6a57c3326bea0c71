"""The one way tests wait for something another thread or process does: a deadline, never a
measured gap (a loaded CI machine is slow, not wrong)."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T], what: str, timeout: float = 30.0, interval: float = 0.1,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``probe`` until it returns something truthy, and return that. An exception in
    ``ignoring`` counts as "not yet"; at the deadline an AssertionError names ``what`` and
    the last value (or error) seen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
            if value:
                return value
            last: object = value
        except ignoring as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last seen: {last!r})")
        time.sleep(interval)
