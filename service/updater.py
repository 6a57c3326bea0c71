"""The model update pipeline, driven by the twin's desired properties.

desired -> rollback check -> download window -> fetch (a delta patch applied to a bundle
the device holds, else the full bundle; resumable, in ranges) -> verify (SHA-256/MD5, then
the Ed25519 signature when the device has trusted keys) -> unpack (safe) -> validate (child
process) -> promote (atomic rename, the bundle kept beside the model as the base of the next
delta) -> publish (manifest) -> report.

Rules that keep a device in the desert serving:
* nothing is published until the new model loaded and ran in validation; any failure
  leaves the manifest, and so the serving model, untouched, and is reported with a reason;
* a desired document is handled once: its fingerprint (``$version``, or a hash of the
  document when the twin has none) is persisted when the outcome is final, so a
  reconnect or restart that delivers the same document again does nothing, while a
  restart in the middle of a download resumes it;
* a newer desired document cancels a download of an older target;
* network failures that outlast the downloader's retries are retried later, not dropped;
* with trusted keys (``TWINFER_TRUSTED_KEYS``) only signed bundles activate, a staged
  version too: its signature is checked against the SHA-256 recorded when it was installed;
* a version lower than the highest ever activated for the same name is refused unless the
  twin says ``model.allow_downgrade: true`` (rollback protection; ``store/versions.json``);
* outside the download windows (``service.schedule``) an update waits, reported as
  ``scheduled``, unless the twin marks it ``urgent``; a window that closes mid-download
  pauses it with the partial file kept;
* a delta is used only when the device holds the exact base bundle (its SHA-256 checked)
  and the patched result has the model's SHA-256; anything else falls back to the full
  bundle, and the report says which path was taken and why.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from service import metrics
from service.bundle import BundleError, UnpackLimits, unpack_bundle
from service.delta import ENGINES as DELTA_ENGINES
from service.delta import DeltaError, apply_patch, decompress_bundle
from service.desired import DesiredDelta, DesiredError, DesiredModel, DesiredState, merge_patch, parse_desired
from service.fetch import DownloadError, DownloadPolicy, DownloadProgress, DownloadResult, download
from service.report import Reporter
from service.signing import NO_TRUSTED_KEY, UNSIGNED, SignatureError, TrustedKey, verify
from service.repository import ModelRepository
from service.rollback import RollbackGuard
from service.rollout import RolloutMonitor
from service.schedule import DownloadWindow, window_state
from service.staging import StagingError, ValidatedModel, recorded_verdict, validate_in_subprocess
from service.twin.base import TwinSource
from service.verify import VerifyError, verify_file
from workers.engines import ENGINE_FORMATS
from workers.manifest import Manifest, publish, read_manifest, write_atomic
from workers.store_layout import BUNDLE_FILE, BUNDLE_RECORD, StoreLayout

log = logging.getLogger("twinfer.updater")
_NOT_SCHEDULED = {"scheduled_for": None, "waiting_for": None}  # reported properties merge: clear a past wait


def local_now() -> datetime:
    """The device's local time (the container's ``TZ``): download windows are in it."""
    return datetime.now().astimezone()


@dataclass(frozen=True)
class UpdaterConfig:
    keep_versions: int = 3
    policy: DownloadPolicy = DownloadPolicy()
    limits: UnpackLimits = UnpackLimits()
    model_output: str = "DLModelOutput"
    validate_timeout: float = 300.0
    retry_seconds: float = 300.0  # after the downloader gave up on a flaky link
    rollout_timeout: float = 300.0  # for every worker to serve a published model
    # None: signatures are not required (the embedded default). A tuple (even empty, when
    # the configured keys could not be loaded): every activation needs a valid signature.
    trusted_keys: tuple[TrustedKey, ...] | None = None
    trusted_keys_error: str | None = None  # why the configured keys could not be loaded
    windows: tuple[DownloadWindow, ...] = ()  # the device's download windows; empty = always open
    clock: Callable[[], datetime] = local_now


class UpdateFailed(Exception):
    def __init__(self, reason: str, message: str, retryable: bool = False, state: str = "failed") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable
        self.state = state  # "failed", or "rolled_back" when workers refused a published model


class _Scheduled(Exception):
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


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fingerprint(document: dict) -> str:
    """The twin's ``$version`` when it has one, else a hash of the content."""
    version = document.get("$version")
    if isinstance(version, int):
        return f"v{version}"
    content = {k: v for k, v in document.items() if not k.startswith("$")}
    return "sha256:" + hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


class ModelUpdater:
    def __init__(
        self, repo: ModelRepository, twin: TwinSource, reporter: Reporter, rollout: RolloutMonitor, config: UpdaterConfig
    ) -> None:
        self.repo = repo
        self.rollout = rollout
        self.twin = twin
        self.reporter = reporter
        self.config = config
        self._desired: dict = {}
        self._inputs = 0
        self._closed = False
        self._cond = threading.Condition()
        self._cancel = threading.Event()
        self._working_on: DesiredModel | None = None
        self._state_path = StoreLayout(repo.store).updater_state
        self._handled, self._outcome = self._load_handled()
        # What every report says of the latest desired document: its $version, the model it
        # asks for and why that is not active (None once it is); restored at start-up.
        self._desired_version: int | None = self._outcome.get("desired_version")
        self._target: dict | None = self._outcome.get("target")
        self._last_error: dict | None = self._outcome.get("last_error")
        self._attempt: str | None = None  # the fingerprint whose handling _last_error belongs to
        self._rollback = RollbackGuard(repo.store)
        self._thread = threading.Thread(target=self._run, name="model-updater", daemon=True)

    # --- inputs -------------------------------------------------------------------

    def on_desired(self, document: dict, full: bool) -> None:
        """Twin callback (any thread): merge, and cancel a download the new document replaces."""
        with self._cond:
            self._desired = dict(document) if full else merge_patch(self._desired, document)
            if "$version" in document:
                self._desired["$version"] = document["$version"]
            self._inputs += 1
            if self._working_on is not None and self._model_of(self._desired) != self._working_on:
                log.info("desired model changed during an update; cancelling it")
                self._cancel.set()
            self._cond.notify_all()

    @staticmethod
    def _model_of(document: dict) -> DesiredModel | None:
        try:
            return parse_desired(document).model
        except DesiredError:
            return None

    def start(self, startup_problems: list[str] | None = None) -> None:
        """Report what serves (and, from ``service.bootstrap``, the damaged versions it
        replaced at start-up), then follow the twin."""
        manifest = read_manifest(self.repo.store)
        if manifest is not None:  # the bootstrapped default, or what ran before rollback protection existed
            self._note_activated(manifest.name, manifest.version)
        if startup_problems:
            self._last_error = _error("damaged_model", "; ".join(startup_problems))
        metrics.STAGED_VERSIONS.set(len(self.repo.versions()))
        self.report_active(manifest, state=self._outcome.get("state") or "active")
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cancel.set()
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        seen = 0
        retry_at: float | None = None
        while True:
            with self._cond:
                while not self._closed and self._inputs == seen and (retry_at is None or time.monotonic() < retry_at):
                    self._cond.wait(None if retry_at is None else max(0.0, retry_at - time.monotonic()))
                if self._closed:
                    return
                seen, document = self._inputs, dict(self._desired)
                self._cancel.clear()
            retry_at = None
            try:
                delay = self.apply(document)
                retry_at = None if delay is None else time.monotonic() + delay
            except Exception:  # a bug must not kill the updater thread
                log.exception("model update crashed")
                self._report_failure("internal", "internal error in the update pipeline; see the module log")

    # --- the pipeline -------------------------------------------------------------

    def apply(self, document: dict) -> float | None:
        """Handle one desired document; returns the seconds after which to try it again
        (a flaky link, a closed download window), or None when it is done."""
        mark = fingerprint(document)
        if mark == self._handled:
            log.debug("desired %s already handled", mark)
            return None
        version = document.get("$version")
        self._desired_version = version if isinstance(version, int) else None
        if mark != self._attempt:  # a new document: an earlier one's error says nothing of it
            self._attempt, self._last_error = mark, None
        try:
            state = parse_desired(document)
        except DesiredError as exc:
            self._target = None
            self._report_failure("malformed_desired", str(exc))
            self._mark_handled(mark, "failed")
            return None
        if state.model is None:
            self._target = None
            self.report_active(read_manifest(self.repo.store))
            self._mark_handled(mark, "active")
            return None
        self._target = {"name": state.model.name, "version": state.model.version}
        started = time.monotonic()
        with self._cond:
            self._working_on = state.model
        try:
            manifest = self._bring_in(state)
        except _Scheduled as wait:
            log.info("%s %s: %s; waiting until %s", state.model.name, state.model.version, wait.why,
                     wait.opens.isoformat(timespec="minutes"))
            self._report(state.model, "scheduled", scheduled_for=wait.opens.isoformat(timespec="seconds"),
                         progress=None, waiting_for=wait.why)
            return max(1.0, (wait.opens - self.config.clock()).total_seconds())
        except UpdateFailed as exc:
            if exc.reason == "cancelled":
                log.info("update to %s %s cancelled by a newer desired document", state.model.name, state.model.version)
                return None
            metrics.DOWNLOAD_FAILURES.labels(exc.reason).inc()
            metrics.UPDATES.labels("failed").inc()
            self._report_failure(exc.reason, exc.message, "retrying" if exc.retryable else exc.state)
            if exc.retryable:
                return self.config.retry_seconds
            self._mark_handled(mark, exc.state)
            return None
        finally:
            metrics.DOWNLOAD_RATE.set(0)
            with self._cond:
                self._working_on = None
        self._mark_handled(mark, "active")
        log.info(
            "%s %s active as generation %d after %.1f s", manifest.name, manifest.version, manifest.generation,
            time.monotonic() - started,
        )
        return None

    def _bring_in(self, state: DesiredState) -> Manifest:
        target = state.model
        assert target is not None
        current = read_manifest(self.repo.store)
        if current is not None and (current.name, current.version) == (target.name, target.version):
            if current.score_threshold != state.score_threshold:
                current = self._publish(target, current.format, current.decoder, state.score_threshold)
            else:
                self._last_error = None
                self.report_active(current)
            return current
        self._check_downgrade(target)
        if self.repo.has(target.name, target.version):
            # Already staged (e.g. a rollback by twin): no download, and no second
            # validation when the first one's verdict still matches the model file.
            self._report(target, "staging", download=None)  # nothing downloaded for this document
            directory = self.repo.version_dir(target.name, target.version)
            if self.config.trusted_keys is not None:
                self._check_signature(target, self._recorded_sha256(directory, target))
            validated = recorded_verdict(directory) or self._validate(directory, target)
            return self._publish(target, validated.format, validated.decoder, state.score_threshold)
        if target.url is None:
            raise UpdateFailed("not_in_store", f"{target.name} {target.version} is not in this device's store and the "
                                               f"twin gives no model.url to download it from")
        part = self.repo.download_path(target.name, target.version)
        self.repo.drop_downloads_except(part)
        delivery = self._deliver(target, part, state)
        self._report(target, "verifying", download=delivery.report())
        try:
            # sha256 computed even if only md5 was given; a patched bundle was checked already
            sha256, md5 = delivery.digests or verify_file(part, target.sha256, target.md5)
        except (VerifyError, ValueError) as exc:
            part.unlink(missing_ok=True)
            raise UpdateFailed("checksum_mismatch", str(exc)) from None
        try:
            self._check_signature(target, sha256)
        except UpdateFailed:
            part.unlink(missing_ok=True)
            raise
        self._report(target, "staging")
        candidate = self.repo.new_staging_dir(f"{target.name}-{target.version}")
        try:
            self._unpack(part, target, candidate)
            validated = self._validate(candidate, target)
            # Written after unpacking, so a bundle cannot bring its own record.
            record = {"sha256": sha256, "md5": md5, "size": part.stat().st_size, "file_name": target.file_name}
            write_atomic(candidate / BUNDLE_RECORD, json.dumps(record).encode())
            os.replace(part, candidate / BUNDLE_FILE)
            self.repo.promote(candidate, target.name, target.version)
        except BaseException:
            shutil.rmtree(candidate, ignore_errors=True)
            raise
        finally:
            part.unlink(missing_ok=True)
        return self._publish(target, validated.format, validated.decoder, state.score_threshold)

    # --- trust: signatures and rollback protection ----------------------------------

    def _check_signature(self, target: DesiredModel, sha256: str | None) -> None:
        """With trusted keys, the twin's signature must cover (name, version, sha256)."""
        keys = self.config.trusted_keys
        if keys is None:
            return
        if sha256 is None:  # a staged version with no record of the bundle it came from
            raise UpdateFailed(
                "unsigned" if not target.signature else "signature_invalid",
                f"{target.name} {target.version} is in the store but was not installed from a bundle this device "
                f"recorded (no SHA-256 to check a signature against); with trusted keys only signed bundles "
                f"activate: roll it out again as a signed bundle under a new version",
            )
        try:
            key = verify(keys, target.name, target.version, sha256, target.signature)
        except SignatureError as exc:
            message = str(exc)
            if exc.reason == NO_TRUSTED_KEY and self.config.trusted_keys_error:
                message += f": {self.config.trusted_keys_error}"
            raise UpdateFailed("unsigned" if exc.reason == UNSIGNED else "signature_invalid", message) from None
        log.info("%s %s: signature verified with trusted key %s", target.name, target.version, key)

    def _recorded_sha256(self, directory: Path, target: DesiredModel) -> str | None:
        try:
            value = json.loads((directory / BUNDLE_RECORD).read_text()).get("sha256")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None

    def _check_downgrade(self, target: DesiredModel) -> None:
        refusal = self._rollback.refusal(target.name, target.version, target.allow_downgrade, target.version_is_digest)
        if refusal is not None:
            raise UpdateFailed("downgrade_refused", refusal)

    def _note_activated(self, name: str, version: str, digest: bool = False) -> None:
        if not digest:
            self._rollback.note_activated(name, version)

    # --- delivery: delta or full bundle, inside the download windows ------------------

    def _deliver(self, target: DesiredModel, part: Path, state: DesiredState) -> Delivery:
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

    def _decompress(self, packed: Path, part: Path, target: DesiredModel) -> int:
        """A bundle served as a zstd frame -> the bundle; its hashes are checked next, as always."""
        try:
            return decompress_bundle(packed, part, max_output_bytes=self.config.limits.max_total_bytes)
        except DeltaError as exc:
            raise UpdateFailed("checksum_mismatch" if exc.reason == "corrupt_patch" else "bad_bundle_too_large",
                               f"{target.file_name}: the compressed bundle does not decompress: {exc}") from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UpdateFailed("no_space", f"disk full decompressing {target.file_name}") from None
            raise
        finally:
            packed.unlink(missing_ok=True)

    def _by_delta(self, target: DesiredModel, delta: DesiredDelta, part: Path, state: DesiredState) -> Delivery:
        """Download the patch, apply it to the base bundle kept in the store, check the result."""
        if delta.engine not in DELTA_ENGINES:
            raise _DeltaUnusable("unsupported_engine", f"this device applies {', '.join(DELTA_ENGINES)} patches, "
                                                       f"not {delta.engine}")
        base = self.repo.version_dir(target.name, delta.base_version) / BUNDLE_FILE
        if not base.is_file():
            raise _DeltaUnusable("base_missing", f"this device does not hold the bundle of {target.name} "
                                                 f"{delta.base_version}")
        try:
            verify_file(base, delta.base_sha256, None)
        except (VerifyError, ValueError) as exc:
            raise _DeltaUnusable("base_mismatch", f"the bundle of {target.name} {delta.base_version} held here is "
                                                  f"not the patch's base: {exc}") from None
        patch = part.with_name(part.name + ".patch")
        patched = part.with_name(part.name + ".patched")
        try:
            result = self._fetch(target, delta.url, patch, delta.size, state)
        except UpdateFailed as exc:
            if exc.retryable or exc.reason == "cancelled":
                raise
            raise _DeltaUnusable(f"patch_{exc.reason}", exc.message) from None
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
            raise _DeltaUnusable("patch_checksum", str(exc)) from None
        try:
            limit = target.bundle_size or self.config.limits.max_total_bytes
            size = apply_patch(base, patch, patched, max_output_bytes=limit, engine=delta.engine)
        except DeltaError as exc:
            raise _DeltaUnusable(exc.reason, str(exc)) from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UpdateFailed("no_space", f"disk full applying the patch for {target.name} {target.version}")
            raise
        try:
            digests = verify_file(patched, target.sha256, target.md5)
        except (VerifyError, ValueError) as exc:
            raise _DeltaUnusable("result_checksum", f"the patched bundle is not the model's: {exc}") from None
        return size, digests

    def _fetch(self, target: DesiredModel, url: str, part: Path, size: int | None, state: DesiredState) -> DownloadResult:
        """One download inside the open download window, at its cap; failures as UpdateFailed."""
        deadline, rate = self._window_now(target, state)
        policy = replace(self.config.policy, rate_limit_bps=rate,
                         range_bytes=self.config.policy.range_bytes if state.range_bytes is None else state.range_bytes)
        self._report(target, "downloading", progress=None)

        gate = ProgressGate()

        def progress(p: DownloadProgress) -> None:
            metrics.DOWNLOAD_RATE.set(p.rate_bps)
            if gate.passes(p, time.monotonic()):
                self._report(target, "downloading", progress=_progress_fields(p))

        try:
            result = download(
                url, part, expected_size=size, policy=policy, on_progress=progress,
                on_bytes=metrics.DOWNLOAD_BYTES.inc, cancel=self._cancel, deadline=deadline,
            )
        except DownloadError as exc:
            if exc.reason == "window_closed":
                self._window_now(target, state)  # raises _Scheduled with the next opening
            raise UpdateFailed(exc.reason, str(exc), retryable=exc.retryable) from None
        metrics.DOWNLOAD_SECONDS.observe(result.seconds)
        return result

    def _window_now(self, target: DesiredModel, state: DesiredState) -> tuple[float | None, int | None]:
        """(deadline as ``time.monotonic()``, rate cap) for downloading now; ``_Scheduled``
        outside the windows. The twin's windows replace the device's; urgent ignores both."""
        windows = self.config.windows if state.windows is None else state.windows
        cap = state.max_bytes_per_second or self.config.policy.rate_limit_bps
        if target.urgent or not windows:
            return None, cap
        now = self.config.clock()
        window = window_state(windows, now)
        if not window.open:
            assert window.next_opening is not None
            raise _Scheduled(window.next_opening,
                             f"outside the download windows ({', '.join(w.describe() for w in windows)})")
        deadline = None if window.until is None else time.monotonic() + (window.until - now).total_seconds()
        return deadline, (window.window.max_bytes_per_second if window.window else None) or cap

    def _unpack(self, part: Path, target: DesiredModel, candidate: Path) -> None:
        """A ZIP bundle, or (for convenience) a bare .onnx/.tflite file."""
        suffix = Path(target.file_name).suffix.lower()
        if suffix in ENGINE_FORMATS and not zipfile.is_zipfile(part):
            shutil.copyfile(part, candidate / f"model{suffix}")
            return
        try:
            unpack_bundle(part, candidate, self.config.limits)
        except BundleError as exc:
            raise UpdateFailed(f"bad_bundle_{exc.reason}", str(exc)) from None

    def _validate(self, directory: Path, target: DesiredModel) -> ValidatedModel:
        try:
            return validate_in_subprocess(directory, target.name, target.version, self.config.validate_timeout)
        except StagingError as exc:
            raise UpdateFailed("invalid_model", str(exc)) from None

    def _publish(self, target: DesiredModel, format: str, decoder: str, threshold: float | None) -> Manifest:
        """Publish, then follow the rollout: active once every worker serves it."""
        previous = read_manifest(self.repo.store)
        directory = self.repo.version_dir(target.name, target.version)
        manifest = publish(
            self.repo.store, target.name, target.version, self.repo.relative(directory), format, decoder, threshold
        )
        self.report_active(manifest, state="rolling_out")
        outcome = self.rollout.wait(manifest.generation, self.config.rollout_timeout)
        if outcome.result in ("rolled_back", "failed"):
            raise UpdateFailed(
                "worker_load_failed",
                f"{target.name} {target.version} did not load in the workers: {outcome.reason}",
                state=outcome.result,
            )
        if outcome.result == "timeout":
            log.warning("rollout of generation %d incomplete after %.0f s (%d of %d workers)",
                        manifest.generation, self.config.rollout_timeout, outcome.workers_on_new, outcome.workers)
        self._note_activated(target.name, target.version, target.version_is_digest)
        protect = {directory} | ({previous.model_dir(self.repo.store)} if previous else set())
        for removed in self.repo.prune(self.config.keep_versions, protect):
            log.info("removed old model version %s", removed)
        metrics.STAGED_VERSIONS.set(len(self.repo.versions()))
        metrics.LAST_UPDATE.set(time.time())
        metrics.UPDATES.labels("published").inc()
        self.reporter.update({"LatestAIModelFileName": target.file_name})
        self._last_error = None
        self.report_active(manifest)
        self._announce(manifest)
        return manifest

    def _announce(self, manifest: Manifest) -> None:
        """The reference design's routing message: where the new model lives."""
        directory = manifest.model_dir(self.repo.store)
        model_file = next((p for p in directory.iterdir() if p.suffix.lower() in ENGINE_FORMATS), None)
        labels = next(iter(sorted(directory.glob("*.txt"))), None)
        payload = {
            "local_model_path": self.repo.relative(model_file) if model_file else None,
            "local_labelmap_path": self.repo.relative(labels) if labels else None,
            "name": manifest.name,
            "version": manifest.version,
            "generation": manifest.generation,
        }
        try:
            self.twin.send_event(self.config.model_output, payload)
        except Exception as exc:  # the model is live either way; the message is best effort
            log.warning("could not send the model-ready message: %s", exc)

    # --- state and reports --------------------------------------------------------

    def _load_handled(self) -> tuple[str | None, dict]:
        """The last desired document handled, and the outcome reported for it."""
        try:
            saved = json.loads(self._state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None, {}
        if not isinstance(saved, dict):
            return None, {}
        outcome = saved.get("outcome")
        return saved.get("handled"), (outcome if isinstance(outcome, dict) else {})

    def _mark_handled(self, mark: str, state: str) -> None:
        self._handled = mark
        self._outcome = {"state": state, "desired_version": self._desired_version, "target": self._target,
                         "last_error": self._last_error}
        write_atomic(self._state_path, json.dumps({"handled": mark, "outcome": self._outcome}).encode())

    def _write_status(self, state: str, **fields: Any) -> None:
        """Every ``model`` report names the state, the desired document, its target and its
        error together, so no field is left over from an earlier document."""
        self.reporter.update(
            {
                "model": {
                    "state": state,
                    "desired_version": self._desired_version,
                    "target": self._target,
                    "last_error": self._last_error,
                    "updated_at": utc_now(),
                    **_NOT_SCHEDULED,
                    **fields,
                }
            }
        )

    def _report(self, target: DesiredModel, state: str, **fields: Any) -> None:
        self._target = {"name": target.name, "version": target.version}
        self._write_status(state, **fields)

    def report_active(self, manifest: Manifest | None, state: str = "active") -> None:
        active = None
        if manifest is not None:
            active = {
                "name": manifest.name, "version": manifest.version, "generation": manifest.generation,
                "format": manifest.format, "decoder": manifest.decoder, "score_threshold": manifest.score_threshold,
                "since": datetime.fromtimestamp(manifest.published_at, timezone.utc).isoformat(timespec="seconds"),
            }
        self._write_status(state, active=active, progress=None)

    def _report_failure(self, reason: str, message: str, state: str = "failed") -> None:
        log.error("model update failed (%s): %s", reason, message)
        self._last_error = _error(reason, message)
        if state == "rolled_back":
            self.report_active(read_manifest(self.repo.store), state=state)
        self._write_status(state, progress=None)


def _error(reason: str, message: str) -> dict:
    return {"reason": reason, "message": message, "at": utc_now()}


def _progress_fields(p: DownloadProgress) -> dict:
    return {
        "bytes": p.received,
        "total": p.total,
        "percent": round(100.0 * p.received / p.total, 1) if p.total else None,
        "rate_bps": round(p.rate_bps),
        "eta_s": round(p.eta_seconds) if p.eta_seconds is not None else None,
    }
