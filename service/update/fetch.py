"""Resumable, polite HTTP download of one model bundle into a ``.part`` file.

Edge links are slow, flaky and metered, so a download picks up where it stopped (``Range``
guarded by ``If-Range`` on the ETag), also after a supervisor restart: a JSON sidecar next
to the ``.part`` file records which blob (URL without query, ETag, size) its bytes belong
to. With ``range_bytes`` the blob is fetched in ranges of that size (as Azure Device
Update does, ~1 MB), each retried on its own, so a link that drops every few seconds still
moves forward and a proxy that cuts long responses does no harm. Failures back off with
full jitter, the rate can be capped, a ``deadline`` (the end of a download window) pauses
the transfer with the file kept, and the URL's query string (a SAS token) never reaches a
log line, an error message or the sidecar.

446 lines: one download's state machine (resume, ranges, retries, pacing, deadline, disk)
stays in one class so every transition can be read in one place; reading the server's
answers is ``service.update.http_answers``.
"""
from __future__ import annotations

import errno
import json
import logging
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import requests
from urllib3.exceptions import HTTPError as Urllib3Error

from service.update import failures
from service.update.http_answers import (
    base_url,
    body_chunks,
    content_length,
    content_range,
    redact_url,
    retry_after,
    scrub,
)
from service.update.link import SharedLink
from twinfer.manifest import write_atomic

log = logging.getLogger("twinfer.fetch")

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class DownloadPolicy:
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_attempts: int = 8  # consecutive attempts that did not grow the file; growth resets the count
    backoff_initial: float = 1.0
    backoff_max: float = 60.0  # also caps a server's Retry-After
    rate_limit_bps: int | None = None  # bytes/s cap for metered links; None = no cap
    progress_interval: float = 5.0  # seconds between progress callbacks/log lines
    chunk_size: int = 64 * 1024
    range_bytes: int = 0  # > 0: request the blob in ranges of this size; 0: one request for the rest
    min_free_bytes: int = 64 * 1024 * 1024  # keep this much free on the store's filesystem
    link: SharedLink | None = field(default=None, compare=False)  # the cap shared with other downloads; None: own


@dataclass(frozen=True)
class DownloadProgress:
    received: int  # bytes in the .part file
    total: int | None
    rate_bps: float  # bytes received over the network in this call / seconds since it started
    eta_seconds: float | None


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    transferred: int  # bytes actually received over the network in this call
    resumed_from: int
    restarts: int
    seconds: float
    etag: str | None


class DownloadError(Exception):
    """A download that did not complete.

    ``reason``: forbidden, not_found, http_error, network, no_space, size_mismatch,
    cancelled or window_closed (the deadline passed; the file is kept). ``retryable``: the same call later may succeed without anyone changing
    anything (a new SAS token, more disk, another URL). The message never holds the query.
    """

    def __init__(self, reason: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable


class _Retry(Exception):
    """One attempt failed in a way worth trying again; ``immediate`` skips the backoff."""

    def __init__(self, reason: str, why: str, retry_after: float | None = None, immediate: bool = False) -> None:
        super().__init__(why)
        self.reason = reason
        self.why = why
        self.retry_after = retry_after
        self.immediate = immediate


class _Download:
    """State of one ``download()`` call; the sidecar carries it to the next process."""

    def __init__(
        self,
        url: str,
        part_path: Path,
        expected_size: int | None,
        policy: DownloadPolicy,
        on_progress: Callable[[DownloadProgress], None] | None,
        on_bytes: Callable[[int], None] | None,
        cancel: threading.Event | None,
        sleep: Callable[[float], None],
        deadline: float | None = None,
    ) -> None:
        self.url = url
        self.label = redact_url(url)
        self.part_path = part_path
        self.sidecar = Path(str(part_path) + ".json")
        self.expected_size = expected_size
        self.policy = policy
        self.on_progress = on_progress
        self.on_bytes = on_bytes
        self.cancel = cancel
        self.sleep = sleep
        self.deadline = deadline
        self.etag: str | None = None
        self.total: int | None = None
        self.have = 0
        self.transferred = 0
        self.restarts = 0
        self.started = time.monotonic()
        self.last_report = self.started
        self.saved: tuple[str | None, int | None] | None = None
        self.link = policy.link or SharedLink()

    # -- state on disk -------------------------------------------------------------------

    def load(self) -> None:
        """Adopt the ``.part`` file if its sidecar says it holds the start of this blob."""
        self.have = self.part_path.stat().st_size if self.part_path.exists() else 0
        try:
            state = json.loads(self.sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = None
        stale = (
            not self.part_path.exists()
            or not isinstance(state, dict)
            or state.get("url") != base_url(self.url)
            or (state.get("total") is not None and self.have > state["total"])
            or (None not in (state.get("total"), self.expected_size) and state["total"] != self.expected_size)
        )
        if stale:
            if self.have:
                log.info("download %s: discarding %d bytes in %s, they belong to another download",
                         self.label, self.have, self.part_path.name)
            self.discard()
            self.have = 0
            return
        self.etag, self.total = state.get("etag"), state.get("total")
        self.saved = (self.etag, self.total)

    def save(self) -> None:
        """Written before the body it describes, atomically: a crash leaves a consistent pair."""
        if self.saved == (self.etag, self.total):
            return
        state = {"url": base_url(self.url), "etag": self.etag, "total": self.total}
        write_atomic(self.sidecar, json.dumps(state).encode())
        self.saved = (self.etag, self.total)

    def discard(self) -> None:
        self.part_path.unlink(missing_ok=True)
        self.sidecar.unlink(missing_ok=True)

    def restart(self, why: str) -> None:
        """Drop the bytes so far: truncate first, so the old sidecar never describes new bytes."""
        log.warning("download %s: restarting from byte 0 after %d bytes: %s", self.label, self.have, why)
        self.part_path.write_bytes(b"")
        self.have = 0
        self.restarts += 1

    def check_space(self) -> None:
        known = self.total if self.total is not None else self.expected_size
        remaining = max(0, known - self.have) if known is not None else 0
        if known is not None and remaining == 0:
            return  # nothing left to write
        free = shutil.disk_usage(self.part_path.parent).free
        if free < remaining + self.policy.min_free_bytes:
            raise DownloadError(
                failures.NO_SPACE,
                f"not enough free space in {self.part_path.parent} for {self.label}: {remaining} bytes to go "
                f"plus a reserve of {self.policy.min_free_bytes} bytes, {free} bytes free",
            )

    def size_mismatch(self, message: str) -> DownloadError:
        self.discard()
        return DownloadError(failures.SIZE_MISMATCH, f"{self.label}: {message}")

    # -- waiting -------------------------------------------------------------------------

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadError(failures.CANCELLED, f"download of {self.label} cancelled at byte {self.have}")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DownloadError(
                failures.WINDOW_CLOSED, f"download of {self.label} paused at byte {self.have}: the download window closed",
                retryable=True,
            )

    def wait(self, seconds: float) -> None:
        """Backoff and rate pacing; a cancel wakes a real sleep (an injected one is a test's clock),
        and no wait runs past the deadline."""
        if self.deadline is not None:
            seconds = min(seconds, max(0.0, self.deadline - time.monotonic()))
        if seconds <= 0:
            self.check_cancel()
            return
        if self.cancel is not None and self.sleep is time.sleep:
            self.cancel.wait(seconds)
        else:
            self.sleep(seconds)
        self.check_cancel()

    def backoff(self, stalled: int, retry_after: float | None) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2^n)], n = failures in a row - 1."""
        if retry_after is not None:
            return min(retry_after, self.policy.backoff_max)
        ceiling = min(self.policy.backoff_max, self.policy.backoff_initial * 2 ** max(stalled - 1, 0))
        return random.uniform(0, ceiling)

    def pace(self, size: int) -> None:
        """Sleep until the link's schedule allows the bytes just taken (``service.update.link``)."""
        rate = self.policy.rate_limit_bps
        if rate:
            self.wait(self.link.reserve(size, rate))

    # -- the transfer --------------------------------------------------------------------

    def run(self) -> DownloadResult:
        """The download; out of space (checked first, or the disk filling up while writing
        the file or its sidecar) drops the partial file: kept, it would hold the disk full
        for the serving model, its metrics and reports, and the update fails anyway."""
        try:
            return self.transfer()
        except DownloadError as exc:
            if exc.reason == failures.NO_SPACE:
                self.discard()
            raise
        except OSError as exc:
            if exc.errno not in _NO_SPACE:
                raise
            self.discard()
            raise DownloadError(
                failures.NO_SPACE, f"disk full in {self.part_path.parent} writing {self.label} at byte {self.have}"
            ) from None

    def transfer(self) -> DownloadResult:
        self.load()
        resumed_from = self.have
        self.check_space()
        if self.have:
            log.info("download %s: resuming at byte %d of %s", self.label, self.have, self.total or "?")
        stalled = 0
        with requests.Session() as session:
            while not (self.total is not None and self.have == self.total):
                self.check_cancel()
                before = self.have
                try:
                    self.attempt(session)
                except _Retry as retry:
                    stalled = 0 if self.have > before else stalled + 1
                    if stalled >= self.policy.max_attempts:
                        raise DownloadError(
                            retry.reason,
                            f"gave up on {self.label} after {stalled} attempts without progress "
                            f"(at byte {self.have}); last error: {retry.why}",
                            retryable=True,
                        ) from None
                    delay = 0.0 if retry.immediate else self.backoff(stalled, retry.retry_after)
                    log.warning("download %s: %s; retrying in %.1f s (%d of %d attempts in a row without progress)",
                                self.label, retry.why, delay, stalled, self.policy.max_attempts)
                    self.wait(delay)
        self.sidecar.unlink(missing_ok=True)
        self.report(final=True)
        seconds = time.monotonic() - self.started
        log.info("download %s: complete, %d bytes (%d over the network, resumed from %d, %d restarts) in %.1f s",
                 self.label, self.have, self.transferred, resumed_from, self.restarts, seconds)
        return DownloadResult(self.part_path, self.have, self.transferred, resumed_from, self.restarts, seconds,
                              self.etag)

    def attempt(self, session: requests.Session) -> None:
        """One request; returns when the file is complete, raises ``_Retry`` otherwise."""
        headers = {"Accept-Encoding": "identity"}
        asked_end = self.range_end()
        if self.have or asked_end is not None:
            headers["Range"] = f"bytes={self.have}-{'' if asked_end is None else asked_end - 1}"
            if self.etag:
                headers["If-Range"] = self.etag
        timeout = (self.policy.connect_timeout, self.policy.read_timeout)
        try:
            response = session.get(self.url, headers=headers, stream=True, timeout=timeout)
        except requests.RequestException as exc:
            raise _Retry(failures.NETWORK, scrub(exc)) from None
        with response:
            self.check_status(response)
            if response.status_code == 416:
                self.range_not_satisfiable(response)
                return
            self.accept(response)
            self.receive(response)
        if self.total is None:  # no length announced: a cleanly ended body is the whole blob
            if self.expected_size is not None and self.have != self.expected_size:
                raise self.size_mismatch(f"the server sent {self.have} bytes, expected {self.expected_size}")
            self.total = self.have
        elif self.have < self.total and (asked_end is None or self.have < asked_end or response.status_code == 200):
            # a shorter answer than asked for is allowed: ask for the rest
            raise _Retry(failures.NETWORK, f"the response ended at byte {self.have} of {self.total}", immediate=True)

    def range_end(self) -> int | None:
        """End (exclusive) of the next range to ask for; None: the rest of the blob."""
        if not self.policy.range_bytes:
            return None
        end = self.have + self.policy.range_bytes
        return min(end, self.total) if self.total is not None else end

    def check_status(self, response: requests.Response) -> None:
        status = response.status_code
        if status in (200, 206, 416):
            return
        if status in (401, 403):
            raise DownloadError(
                failures.FORBIDDEN,
                f"{self.label} refused with HTTP {status}: the SAS token has expired or does not grant read access",
            )
        if status == 404:
            raise DownloadError(failures.NOT_FOUND, f"{self.label} does not exist (HTTP 404)")
        if status in (408, 429) or status >= 500:
            raise _Retry(failures.HTTP_ERROR, f"HTTP {status} {response.reason}", retry_after(response))
        raise DownloadError(failures.HTTP_ERROR, f"{self.label} answered HTTP {status} {response.reason}")

    def range_not_satisfiable(self, response: requests.Response) -> None:
        """416: complete if the blob is exactly as long as the file, else the file is stale."""
        total = content_range(response.headers.get("Content-Range"))[1]
        if total is not None and total == self.have:
            self.total = total
            return
        self.restart(f"HTTP 416 for a range from byte {self.have} (blob size {total})")
        raise _Retry(failures.HTTP_ERROR, "HTTP 416", immediate=True)

    def accept(self, response: requests.Response) -> None:
        """Check a 200/206 against what is on disk and record the blob's ETag and size."""
        etag = response.headers.get("ETag")
        if response.status_code == 206:
            start, total = content_range(response.headers.get("Content-Range"))
            if start != self.have or (etag and self.etag and etag != self.etag) or (
                None not in (total, self.total) and total != self.total
            ):
                self.restart(f"HTTP 206 from byte {start} of {total} (ETag {etag}) does not continue "
                             f"byte {self.have} of {self.total} (ETag {self.etag})")
                raise _Retry(failures.NETWORK, "the range answer did not continue the file", immediate=True)
            self.etag = etag or self.etag
            total = total if total is not None else self.total
        else:  # 200: the whole blob from byte 0: the range was ignored or If-Range failed
            if self.have:
                self.restart(f"the server sent the whole blob (ETag {self.etag} -> {etag})")
            self.etag, total = etag, content_length(response)
        self.total = total
        if None not in (self.total, self.expected_size) and self.total != self.expected_size:
            raise self.size_mismatch(f"the server has {self.total} bytes, expected {self.expected_size}")
        self.check_space()
        self.save()

    def receive(self, response: requests.Response) -> None:
        size = self.policy.chunk_size
        if self.policy.rate_limit_bps:
            size = max(1024, min(size, self.policy.rate_limit_bps // 10))  # pace in ~0.1 s steps
        chunks = body_chunks(response, size)
        with open(self.part_path, "ab") as out:
            while True:
                self.check_cancel()
                try:
                    chunk = next(chunks, None)
                except (Urllib3Error, requests.RequestException) as exc:
                    raise _Retry(failures.NETWORK, scrub(exc)) from None
                if chunk is None:
                    return
                self.write(out, chunk)
                self.report()
                self.pace(len(chunk))

    def write(self, out: BinaryIO, chunk: bytes) -> None:
        limit = self.total if self.total is not None else self.expected_size
        if limit is not None and self.have + len(chunk) > limit:
            out.close()
            raise self.size_mismatch(f"the server sent more than {limit} bytes")
        out.write(chunk)  # a full disk raises OSError(ENOSPC): ``run`` turns it into no_space
        self.have += len(chunk)
        self.transferred += len(chunk)
        if self.on_bytes is not None:
            self.on_bytes(len(chunk))

    def report(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last_report < self.policy.progress_interval:
            return
        self.last_report = now
        elapsed = now - self.started
        rate = self.transferred / elapsed if elapsed > 0 else 0.0
        remaining = None if self.total is None else self.total - self.have
        eta = 0.0 if remaining == 0 else (remaining / rate if remaining is not None and rate > 0 else None)
        if not final:
            percent = f"{100 * self.have / self.total:.1f}%" if self.total else "?%"
            log.info("download %s: %d of %s bytes (%s) at %.0f B/s, ETA %s", self.label, self.have,
                     self.total if self.total is not None else "?", percent, rate,
                     f"{eta:.0f} s" if eta is not None else "unknown")
        if self.on_progress is not None:
            self.on_progress(DownloadProgress(self.have, self.total, rate, eta))


def download(
    url: str,
    part_path: Path,
    *,
    expected_size: int | None = None,
    policy: DownloadPolicy = DownloadPolicy(),
    on_progress: Callable[[DownloadProgress], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
    sleep: Callable[[float], None] = time.sleep,
    deadline: float | None = None,
) -> DownloadResult:
    """Download ``url`` into ``part_path`` (its folder must exist), resuming what is there.

    On success the complete file stays at ``part_path`` for the caller to verify and rename,
    and the sidecar is gone. On failure both stay for the next call to resume, except after
    ``size_mismatch`` (the bytes are of no use) and ``no_space`` (the disk is needed more).
    ``sleep`` serves backoff and rate pacing; ``deadline`` (``time.monotonic()`` value) stops
    the transfer with ``window_closed``, keeping the file to resume.
    """
    return _Download(url, part_path, expected_size, policy, on_progress, on_bytes, cancel, sleep, deadline).run()
