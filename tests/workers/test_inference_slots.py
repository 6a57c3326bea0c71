"""Inference slots (workers/inference_slots.py): at most ``count`` holders, waiters served
in arrival order, and the counts the gunicorn worker decides on."""
from __future__ import annotations

import threading

import pytest

from workers.inference_slots import InferenceSlots, slots_per_worker


def _wait_for(condition) -> None:
    """Until another thread has reached the state ``condition`` checks (bounded)."""
    done = threading.Event()
    for _ in range(2000):
        if condition():
            return
        done.wait(0.005)
    raise AssertionError("the other threads never got there")


def test_waiters_are_served_in_arrival_order_and_a_late_thread_cannot_jump_the_queue():
    slots = InferenceSlots(1)
    order: list[int] = []
    holder = slots.hold()
    holder.__enter__()
    assert slots.full and slots.waiting == 0
    assert slots.last_queued == float("-inf")  # nobody had to wait yet

    def use(number: int) -> None:
        with slots.hold():
            order.append(number)

    threads = []
    for number in range(5):
        thread = threading.Thread(target=use, args=(number,))
        thread.start()
        threads.append(thread)
        _wait_for(lambda: slots.waiting == number + 1)  # queued in this order
    queued_at = slots.last_queued
    assert queued_at > float("-inf")
    holder.__exit__(None, None, None)
    late = threading.Thread(target=use, args=(99,))  # arrives while the queue is being served
    late.start()
    for thread in [*threads, late]:
        thread.join(10)
    assert order == [0, 1, 2, 3, 4, 99]
    assert not slots.full and slots.waiting == 0
    assert slots.last_queued >= queued_at  # it stays: the worker remembers contention for a while


def test_at_most_count_hold_a_slot_at_once():
    slots = InferenceSlots(2)
    inside, most, lock = 0, 0, threading.Lock()
    release = threading.Event()

    def use() -> None:
        nonlocal inside, most
        with slots.hold():
            with lock:
                inside += 1
                most = max(most, inside)
            release.wait(10)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=use) for _ in range(6)]
    for thread in threads:
        thread.start()
    _wait_for(lambda: slots.waiting == 4)
    assert slots.full
    release.set()
    for thread in threads:
        thread.join(10)
    assert most == 2


def test_on_free_is_called_when_a_slot_frees_with_no_one_waiting():
    slots = InferenceSlots(1)
    calls: list[int] = []
    slots.on_free = lambda: calls.append(slots.waiting)
    first = slots.hold()
    first.__enter__()
    second_done = threading.Event()

    def second() -> None:
        with slots.hold():
            second_done.wait(10)

    waiter = threading.Thread(target=second)
    waiter.start()
    _wait_for(lambda: slots.waiting == 1)
    first.__exit__(None, None, None)  # handed over to the waiter: nothing freed
    assert calls == []
    second_done.set()
    waiter.join(10)
    assert calls == [0]


@pytest.mark.parametrize(
    "workers, intra_op, cores, expected",
    [(2, 1, 2, 1), (1, 1, 2, 2), (2, 2, 2, 1), (1, 1, 8, 8), (2, 1, 8, 4), (3, 1, 2, 1)],
)
def test_slots_per_worker_use_each_core_once(workers, intra_op, cores, expected):
    assert slots_per_worker(workers, intra_op, cores) == expected


def test_on_ask_comes_once_the_thread_holds_a_slot_or_is_in_line():
    slots = InferenceSlots(1)
    seen: list[tuple[bool, int]] = []
    slots.on_ask = lambda: seen.append((slots.full, slots.waiting))
    first = slots.hold()
    first.__enter__()
    assert seen == [(True, 0)]  # the slot is already counted as taken
    waiter = threading.Thread(target=lambda: slots.hold().__enter__())
    waiter.start()
    _wait_for(lambda: len(seen) == 2)
    assert seen[1] == (True, 1)  # already in line
    first.__exit__(None, None, None)  # hands the slot to the waiter, which keeps it
    waiter.join(10)
