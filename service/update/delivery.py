"""Getting a bundle onto the device: by delta, compressed or in full, inside the download windows.

* A delta is used only when the device holds the exact base bundle (its SHA-256 checked)
  and the patched result has the model's SHA-256; anything else falls back to the full
  bundle, and the report says which path was taken and why (``Delivery.report``).
* A bundle the twin marks ``compression: zstd`` is downloaded as a zstd frame and
  decompressed; its hashes are checked next, as always.
* Outside the download windows (``service.update.schedule``) nothing downloads
  (``Scheduled``) unless the twin marks the update ``urgent``; a window that closes
  mid-download pauses it with the partial file kept.
* Progress reaches the twin through a ``ProgressGate``; every tick reaches the metrics.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from service import metrics
from service.repository import ModelRepository
from service.update import failures
from service.update.bundle import UnpackLimits
from service.update.delta import ENGINES as DELTA_ENGINES
from service.update.delta import DeltaError, apply_patch, decompress_bundle
from service.update.desired import DesiredDelta, DesiredModel, DesiredState
from service.update.failures import UpdateFailed
from service.update.fetch import DownloadError, DownloadPolicy, DownloadProgress, DownloadResult, download
from service.update.schedule import DownloadWindow, window_state
from service.update.verify import VerifyError, verify_file
from twinfer.store_layout import BUNDLE_FILE

log = logging.getLogger("twinfer.updater")

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class Scheduled(Exception):
    """No download now: every download window is closed until ``opens`` (local time)."""

    def __init__(self, opens: datetime, why: str) -> None:
        super().__init__(why)
        self.opens = opens
        self.why = why


class _DeltaUnusable(Exception):
    """The twin's delta cannot give this bundle here; ``reason`` goes in the report."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Delivery:
    """How a bundle reached the device, for the report and the bytes-saved metric."""

    path: str  # "delta" or "full"
    size: int  # bundle bytes
    transferred: int  # bytes received over the network for it in this attempt
    saved: int  # bundle bytes that did not cross the network (a patch, compression, a resume)
    result: DownloadResult
    fallback: str | None = None  # why the twin's delta was not used
    digests: tuple[str, str] | None = None  # (sha256, md5) of the bundle, when already checked against the twin

    def report(self) -> dict[str, Any]:
        return {
            "path": self.path, "bytes": self.size, "transferred": self.transferred, "saved_bytes": self.saved,
            "delta_fallback": self.fallback, "resumed_from": self.result.resumed_from,
            "restarts": self.result.restarts, "seconds": round(self.result.seconds, 2),
        }


class ProgressGate:
    """Which download progress ticks reach the twin: one per 10% step, or one every 5 minutes
    when the size is unknown. The rate metric sees every tick; the twin is shared by a fleet
    (IoT Hub S1 takes 50 twin updates/s per hub), and a 2 s report interval on a 10-minute
    download would be 300 updates per device."""

    STEP_PERCENT = 10
    UNKNOWN_SIZE_SECONDS = 300.0

    def __init__(self) -> None:
        self._step = -1
        self._at = float("-inf")

    def passes(self, progress: DownloadProgress, now: float) -> bool:
        if progress.total:
            step = progress.received * 100 // (progress.total * self.STEP_PERCENT)
            passed = step > self._step
            self._step = max(self._step, step)
        else:
            passed = now - self._at >= self.UNKNOWN_SIZE_SECONDS
        if passed:
            self._at = now
        return passed


@dataclass(frozen=True)
class DeliveryConfig:
    policy: DownloadPolicy
    limits: UnpackLimits
    windows: tuple[DownloadWindow, ...]  # the device's download windows; empty = always open
    clock: Callable[[], datetime]  # local time: download windows are in it


class BundleDelivery:
    """Brings one target's bundle into a ``.part`` file; failures as ``UpdateFailed``.

    ``on_progress(target, progress)`` is called with None when a download starts, then with
    the ticks a ``ProgressGate`` lets through. A delta's base is the bundle ``repo`` keeps
    beside each version."""

    def __init__(
        self, config: DeliveryConfig, repo: ModelRepository, cancel: threading.Event,
        on_progress: Callable[[DesiredModel, DownloadProgress | None], None],
    ) -> None:
        self.config = config
        self._cancel = cancel
        self._on_progress = on_progress
        self._repo = repo

    def deliver(self, target: DesiredModel, part: Path, state: DesiredState) -> Delivery:
        """The bundle into ``part``: by the twin's delta when it works here, else in full."""
        fallback = None
        if target.delta is not None:
            try:
                delivery = self._by_delta(target, target.delta, part, state)
                metrics.DOWNLOAD_BYTES_SAVED.labels("delta").inc(delivery.saved)
                return delivery
            except _DeltaUnusable as exc:
                fallback = exc.reason
                log.warning("%s %s: delta not used (%s): %s; downloading the full bundle",
                            target.name, target.version, exc.reason, exc.message)
        if target.compression is None:
            result = self._fetch(target, target.url, part, target.size, state)
            size = result.size
        else:
            packed = part.with_name(part.name + ".zst")
            result = self._fetch(target, target.url, packed, target.size, state)
            size = self._decompress(packed, part, target)
            metrics.DOWNLOAD_BYTES_SAVED.labels("compression").inc(max(0, size - result.size))
        metrics.DOWNLOAD_BYTES_SAVED.labels("resume").inc(result.resumed_from)
        return Delivery("full", size, result.transferred, max(0, size - result.transferred), result, fallback)

    def window_now(self, target: DesiredModel, state: DesiredState) -> tuple[float | None, int | None]:
        """(deadline as ``time.monotonic()``, rate cap) for downloading now; ``Scheduled``
        outside the windows. The twin's windows replace the device's; urgent ignores both."""
        windows = self.config.windows if state.windows is None else state.windows
        cap = state.max_bytes_per_second or self.config.policy.rate_limit_bps
        if target.urgent or not windows:
            return None, cap
        now = self.config.clock()
        window = window_state(windows, now)
        if not window.open:
            assert window.next_opening is not None
            raise Scheduled(window.next_opening,
                            f"outside the download windows ({', '.join(w.describe() for w in windows)})")
        deadline = None if window.until is None else time.monotonic() + (window.until - now).total_seconds()
        return deadline, (window.window.max_bytes_per_second if window.window else None) or cap

    # --- full and compressed ----------------------------------------------------------------

    def _fetch(self, target: DesiredModel, url: str, part: Path, size: int | None, state: DesiredState) -> DownloadResult:
        """One download inside the open download window, at its cap."""
        deadline, rate = self.window_now(target, state)
        policy = replace(self.config.policy, rate_limit_bps=rate,
                         range_bytes=self.config.policy.range_bytes if state.range_bytes is None else state.range_bytes)
        self._on_progress(target, None)
        gate = ProgressGate()

        def progress(p: DownloadProgress) -> None:
            metrics.DOWNLOAD_RATE.labels(target.name).set(p.rate_bps)
            if gate.passes(p, time.monotonic()):
                self._on_progress(target, p)

        try:
            result = download(
                url, part, expected_size=size, policy=policy, on_progress=progress,
                on_bytes=metrics.DOWNLOAD_BYTES.inc, cancel=self._cancel, deadline=deadline,
            )
        except DownloadError as exc:
            if exc.reason == failures.WINDOW_CLOSED:
                self.window_now(target, state)  # raises Scheduled with the next opening
            raise UpdateFailed(exc.reason, str(exc), retryable=exc.retryable) from None
        metrics.DOWNLOAD_SECONDS.observe(result.seconds)
        return result

    def _decompress(self, packed: Path, part: Path, target: DesiredModel) -> int:
        try:
            return decompress_bundle(packed, part, max_output_bytes=self.config.limits.max_total_bytes)
        except DeltaError as exc:
            reason = failures.CHECKSUM_MISMATCH if exc.reason == "corrupt_patch" else failures.bad_bundle("too_large")
            raise UpdateFailed(reason, f"{target.file_name}: the compressed bundle does not decompress: {exc}") from None
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise UpdateFailed(failures.NO_SPACE, f"disk full decompressing {target.file_name}") from None
            raise
        finally:
            packed.unlink(missing_ok=True)

    # --- delta ---------------------------------------------------------------------------------

    def _by_delta(self, target: DesiredModel, delta: DesiredDelta, part: Path, state: DesiredState) -> Delivery:
        """Download the patch, apply it to the base bundle kept in the store, check the result."""
        if delta.engine not in DELTA_ENGINES:
            raise _DeltaUnusable(failures.DELTA_UNSUPPORTED_ENGINE,
                                 f"this device applies {', '.join(DELTA_ENGINES)} patches, not {delta.engine}")
        base = self._repo.version_dir(target.name, delta.base_version) / BUNDLE_FILE
        if not base.is_file():
            raise _DeltaUnusable(failures.DELTA_BASE_MISSING,
                                 f"this device does not hold the bundle of {target.name} {delta.base_version}")
        try:
            verify_file(base, delta.base_sha256, None)
        except (VerifyError, ValueError) as exc:
            raise _DeltaUnusable(failures.DELTA_BASE_MISMATCH, f"the bundle of {target.name} {delta.base_version} "
                                                              f"held here is not the patch's base: {exc}") from None
        patch = part.with_name(part.name + ".patch")
        patched = part.with_name(part.name + ".patched")
        try:
            result = self._fetch(target, delta.url, patch, delta.size, state)
        except UpdateFailed as exc:
            if exc.retryable or exc.reason == failures.CANCELLED:
                raise
            raise _DeltaUnusable(failures.patch_failed(exc.reason), exc.message) from None
        try:
            size, digests = self._patch(base, patch, patched, target, delta)
        except BaseException:
            patched.unlink(missing_ok=True)
            raise
        finally:
            patch.unlink(missing_ok=True)
        os.replace(patched, part)
        Path(str(part) + ".json").unlink(missing_ok=True)  # the sidecar of an earlier full download's bytes
        return Delivery("delta", size, result.transferred, max(0, size - result.transferred), result, digests=digests)

    def _patch(
        self, base: Path, patch: Path, patched: Path, target: DesiredModel, delta: DesiredDelta
    ) -> tuple[int, tuple[str, str]]:
        """Check the patch, apply it, check the result (its size and digests are returned):
        every failure means "use the full bundle"."""
        try:
            verify_file(patch, delta.sha256, None)
        except (VerifyError, ValueError) as exc:
            raise _DeltaUnusable(failures.DELTA_PATCH_CHECKSUM, str(exc)) from None
        try:
            limit = target.bundle_size or self.config.limits.max_total_bytes
            size = apply_patch(base, patch, patched, max_output_bytes=limit, engine=delta.engine)
        except DeltaError as exc:
            raise _DeltaUnusable(exc.reason, str(exc)) from None
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise UpdateFailed(failures.NO_SPACE, f"disk full applying the patch for {target.name} {target.version}")
            raise
        try:
            digests = verify_file(patched, target.sha256, target.md5)
        except (VerifyError, ValueError) as exc:
            raise _DeltaUnusable(failures.DELTA_RESULT_CHECKSUM, f"the patched bundle is not the model's: {exc}") from None
        return size, digests

