"""The device's one network link, shared by the downloads running at once.

Each model downloads in its own lane (``service.update.pool``), so two models may
download together; the bandwidth cap (``TWINFER_DOWNLOAD_MAX_BPS``, the twin's
``download.max_bytes_per_second``, a window's ``@bytes/s``) is the link's, not each
download's. Every chunk a download receives reserves its share of one schedule: the
link's clock advances by ``bytes / cap`` per chunk, whoever took it, and the download
sleeps until the clock says its bytes were allowed. Two downloads at once then get about
half the cap each, and one alone gets all of it; a slow link (bytes arriving later than
the cap allows) never waits, and never bursts to catch up by more than one chunk.
"""
from __future__ import annotations

import threading
import time
from typing import Callable


class SharedLink:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._allowed_until = 0.0  # the link's schedule: bytes reserved so far are allowed until then
        self._lock = threading.Lock()

    def reserve(self, size: int, rate: int) -> float:
        """``size`` bytes just received at a cap of ``rate`` bytes/s: the seconds to sleep."""
        with self._lock:
            now = self._clock()
            self._allowed_until = max(self._allowed_until, now - size / rate) + size / rate
            return self._allowed_until - now
