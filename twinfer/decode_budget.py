"""How many bytes one process's picture decodes hold at once, and how a picture waits its turn.

Why: what a picture costs is its pixels, not its bytes. A 143 KB PNG of 7000x7000 decodes
into 147 MB (294 MB at the decoder's peak), and a worker's inference slots decoding one
each at the same time stack those: 8 clients sending it took a worker from 397 MB to
2,457 MB (issue 19). So a decode first reserves what it will hold in its worker's budget
(``TWINFER_DECODE_MEMORY``, for all its requests together): a picture that would take
more than the whole budget is refused before decoding (413 ``image_too_large``); the
largest pictures decode one at a time, everyday ones side by side. Turns are taken in
arrival order, so a stream of small pictures cannot starve a large one. A picture that
gets no turn within ``TWINFER_DECODE_WAIT`` is answered 503 ``decode_busy`` with
``Retry-After``: the client retries, the worker stays within its budget.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from typing import Callable, Iterator

from twinfer.errors import DecodeBusy, ImageTooLarge

# What a decode holds at its peak, in bytes of its uint8 output (3 a pixel). Measured with
# OpenCV 5.0 (VmHWM around one cv2.imdecode, 4000x4000): PNG (RGB, RGBA, 16-bit, grey,
# palette) and BMP fill a whole-picture buffer and copy it out, 2.0x; WebP with alpha 2.5x;
# JPEG goes straight into simplejpeg's output array at 1/2-1/8 scale, 1x.
PEAK_COPIES = {"JPEG": 1.0, "PNG": 2.0, "BMP": 2.0, "WEBP": 2.5}
BYTES_PER_PIXEL = 3


def decode_bytes(image_format: str, width: int, height: int, reduction: int = 1) -> int:
    """Bytes a decode of this picture at 1/``reduction`` scale holds at its peak (libjpeg
    rounds a reduced size up)."""
    pixels = math.ceil(width / reduction) * math.ceil(height / reduction)
    return math.ceil(pixels * BYTES_PER_PIXEL * PEAK_COPIES[image_format])


class DecodeBudget:
    """A byte semaphore with first-come turns and a bounded wait."""

    def __init__(self, capacity: int, wait_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self._wait_seconds = wait_seconds
        self._clock = clock
        self._changed = threading.Condition()
        self._in_use = 0
        self._turns: deque[object] = deque()

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return len(self._turns)

    @contextlib.contextmanager
    def reserve(self, cost: int, what: str = "this picture") -> Iterator[None]:
        """Hold ``cost`` bytes while the body of the ``with`` decodes."""
        if cost > self.capacity:
            raise ImageTooLarge(
                f"decoding {what} takes about {cost / 1e6:.0f} MB, over this worker's decode memory of "
                f"{self.capacity / 1e6:.0f} MB (TWINFER_DECODE_MEMORY); send a smaller picture, or a JPEG"
            )
        turn = object()
        with self._changed:
            deadline = self._clock() + self._wait_seconds
            self._turns.append(turn)
            try:
                while self._turns[0] is not turn or self._in_use + cost > self.capacity:
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        raise DecodeBusy(
                            f"this worker's decodes hold {self._in_use / 1e6:.0f} MB of its "
                            f"{self.capacity / 1e6:.0f} MB (TWINFER_DECODE_MEMORY), no room for "
                            f"{cost / 1e6:.0f} MB more within {self._wait_seconds:g} s (TWINFER_DECODE_WAIT); "
                            "retry shortly"
                        )
                    self._changed.wait(remaining)
            finally:
                self._turns.remove(turn)
                self._changed.notify_all()  # the next in line may fit now, or may be first
            self._in_use += cost
        try:
            yield
        finally:
            with self._changed:
                self._in_use -= cost
                self._changed.notify_all()
