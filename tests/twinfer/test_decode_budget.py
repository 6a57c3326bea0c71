"""The memory a process's picture decodes hold at once: shared, first come first served, a
bounded wait, and a detection that holds its share only while it decodes."""
from __future__ import annotations

import itertools
import threading

import cv2
import numpy as np
import pytest

from tests.support.paths import DEFAULT_MODEL
from tests.support.waiting import wait_until
from twinfer.decode_budget import DecodeBudget, decode_bytes
from twinfer.engines import EngineOptions
from twinfer.errors import DecodeBusy, ImageTooLarge
from twinfer.loader import load_model


@pytest.fixture(scope="module")
def default_model():
    return load_model(DEFAULT_MODEL, "default", "1", EngineOptions())


def _expired_clock() -> object:
    """A clock 10 s later at every reading: a 5 s wait is over at its first check."""
    readings = itertools.count(0.0, 10.0)
    return lambda: next(readings)


def test_small_reservations_share_the_budget():
    budget = DecodeBudget(10, wait_seconds=0)
    with budget.reserve(4), budget.reserve(6):
        assert budget.in_use == 10
    assert budget.in_use == 0


def test_a_full_budget_answers_busy_with_a_retry_hint_and_keeps_its_count():
    budget = DecodeBudget(10_000_000, wait_seconds=5, clock=_expired_clock())
    with budget.reserve(8_000_000):
        with pytest.raises(DecodeBusy) as busy:
            with budget.reserve(3_000_000):
                pass  # pragma: no cover - never reached
        assert budget.in_use == 8_000_000 and budget.waiting == 0
    assert (busy.value.status, busy.value.reason, busy.value.retry_after) == (503, "decode_busy", 1)
    assert "hold 8 MB of its 10 MB" in busy.value.message and "TWINFER_DECODE_WAIT" in busy.value.message


def test_a_picture_costing_more_than_the_whole_budget_is_refused_without_waiting():
    budget = DecodeBudget(10_000_000, wait_seconds=60)
    with pytest.raises(ImageTooLarge, match="about 12 MB, over this worker's decode memory of 10 MB"):
        with budget.reserve(12_000_000, "this 2000x2000 PNG"):
            pass  # pragma: no cover
    assert budget.in_use == 0 and budget.waiting == 0


def test_turns_are_taken_in_arrival_order_so_a_large_picture_is_not_starved():
    budget = DecodeBudget(10, wait_seconds=60)
    order: list[str] = []
    release_large = threading.Event()

    def decode(name: str, cost: int, hold: threading.Event | None = None) -> None:
        with budget.reserve(cost):
            order.append(name)
            if hold is not None:
                hold.wait(30)

    with budget.reserve(6):  # a decode in flight
        large = threading.Thread(target=decode, args=("large", 10, release_large))
        large.start()
        wait_until(lambda: budget.waiting == 1, "the large picture waits")
        small = threading.Thread(target=decode, args=("small", 1))  # fits, but came later
        small.start()
        wait_until(lambda: budget.waiting == 2, "the small picture waits behind it")
    wait_until(lambda: order == ["large"], "the large picture decodes first")
    assert budget.waiting == 1
    release_large.set()
    large.join(30), small.join(30)
    assert order == ["large", "small"] and budget.in_use == 0


def test_a_waiter_that_gives_up_lets_the_next_one_in():
    budget = DecodeBudget(10, wait_seconds=5, clock=_expired_clock())
    with budget.reserve(10):
        with pytest.raises(DecodeBusy):
            with budget.reserve(5):
                pass  # pragma: no cover
    assert budget.waiting == 0
    with budget.reserve(10):
        assert budget.in_use == 10


@pytest.mark.parametrize("image_format, width, height, reduction, expected", [
    ("PNG", 1000, 1000, 1, 6_000_000), ("BMP", 10, 10, 1, 600), ("WEBP", 1000, 1000, 1, 7_500_000),
    ("JPEG", 4001, 3001, 8, 501 * 376 * 3), ("JPEG", 1, 1, 8, 3)])
def test_decode_cost_by_format_and_scale(image_format, width, height, reduction, expected):
    assert decode_bytes(image_format, width, height, reduction) == expected


def test_a_detection_holds_its_memory_only_while_it_decodes(default_model):
    picture = cv2.imencode(".png", np.full((600, 800, 3), 90, np.uint8))[1].tobytes()  # costs 2.88 MB
    budget = DecodeBudget(3_000_000, wait_seconds=0)
    default_model.detect(picture, 10**8, budget=budget)
    assert budget.in_use == 0
    with budget.reserve(1_000_000):  # another request decoding: 2.88 MB more do not fit
        with pytest.raises(DecodeBusy):
            default_model.detect(picture, 10**8, budget=budget)
    assert budget.in_use == 0
    with pytest.raises(ImageTooLarge, match="800x600 PNG"):
        default_model.detect(picture, 10**8, budget=DecodeBudget(2_000_000, wait_seconds=0))
