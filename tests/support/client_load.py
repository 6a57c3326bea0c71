"""Client threads calling a server back to back while a test changes its models."""
from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

Answer = TypeVar("Answer")


class ClientLoad(Generic[Answer]):
    """One thread per entry of ``keys`` (a key may repeat: more threads for it), each calling
    ``ask(key)`` back to back until the ``with`` block ends; ``samples[key]`` holds every
    answer, in order. ``ask`` records failures as answers: the threads never raise."""

    def __init__(self, keys: list[str], ask: Callable[[str], Answer]) -> None:
        self.samples: dict[str, list[Answer]] = {key: [] for key in keys}
        self._ask = ask
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(key,), daemon=True) for key in keys]

    def _loop(self, key: str) -> None:
        while not self._stop.is_set():
            self.samples[key].append(self._ask(key))

    def every(self) -> list[Answer]:
        """Every answer of every thread."""
        return [answer for answers in self.samples.values() for answer in answers]

    def __enter__(self) -> "ClientLoad[Answer]":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
