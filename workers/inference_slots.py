"""How many requests of one worker use the model at once, and who waits for a turn.

A gthread worker has several threads so that slow uploads hold a thread, not the worker;
if each ran its inference as soon as its body was in, a 2-core gateway with 2 workers x 6
threads would run up to 12 inferences at once: more runnable threads than cores, each
request's CPU time rising with the load (issue 14 measured 23 -> 31 ms per request from
1 to 8 clients). So a request takes one of the worker's slots while it uses the model
(``ModelHolder.serving``): cores / (workers x intra-op threads) of them, at least one;
the other threads wait their turn in arrival order.

Kept-alive clients stay with the worker that accepted them, and one worker can end up
with most of them while another idles (8 wrk connections, 2 workers: 8/0 seen). So with
several workers a worker accepts a client only while it has a free slot, and while
clients wait it ends connections after the answer (``Connection: close``): the client
reconnects at once and queues in the kernel's accept queue, which every worker takes
from, the way sync workers share clients (``workers.gunicorn_workers``).
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from typing import Callable, Iterator


class InferenceSlots:
    """A counting semaphore that serves its waiters strictly in arrival order (a freed
    slot is handed to the first waiter, never taken by a thread that came later). It
    tells how many wait and when one last had to, and calls ``on_ask`` (in the asking
    thread, once it holds a slot or is in line for one) and ``on_free`` (in the releasing
    thread, when a slot frees while no one waits)."""

    def __init__(self, count: int) -> None:
        self.count = max(1, count)
        self._lock = threading.Lock()
        self._busy = 0
        self._queue: deque[threading.Lock] = deque()
        self.on_free: Callable[[], None] | None = None
        self.on_ask: Callable[[], None] | None = None
        self.last_queued = float("-inf")  # time.monotonic() when a thread last had to wait

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def full(self) -> bool:
        """Every slot is taken: a new request would queue."""
        return self._busy >= self.count

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._lock:
            turn = None
            if self._busy < self.count and not self._queue:
                self._busy += 1
            else:
                turn = threading.Lock()
                turn.acquire()
                self._queue.append(turn)
                self.last_queued = time.monotonic()
        if self.on_ask is not None:  # taken or in line: counted in ``full`` from here on
            self.on_ask()
        if turn is not None:
            turn.acquire()  # released by the thread that hands its slot over
        try:
            yield
        finally:
            with self._lock:
                if self._queue:
                    self._queue.popleft().release()
                    freed = False
                else:
                    self._busy -= 1
                    freed = True
            if freed and self.on_free is not None:
                self.on_free()


def slots_per_worker(workers: int, intra_op_threads: int, cores: int | None = None) -> int:
    """Inferences one worker runs at once so that all workers together use every core once."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // (max(1, workers) * max(1, intra_op_threads)))


_installed: InferenceSlots | None = None


def install(slots: InferenceSlots) -> InferenceSlots:
    """Make ``slots`` this process's (``workers.app.create_app``), for the gunicorn worker."""
    global _installed
    _installed = slots
    return slots


def installed() -> InferenceSlots | None:
    return _installed
