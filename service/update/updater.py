"""One model's updater (a lane): its desired documents one at a time, through the update pipeline.

Each model of the pool has its own lane and thread (``service.update.pool`` hands each its
part of the twin's desired document), so a failing or slow update of one model never
waits for or touches another; the default model's lane is ``lane=None``.

desired (``inbox``) -> rollback check (``trust``) -> download window -> delivery (a delta
patch applied to a bundle the device holds, else the full bundle; resumable, in ranges:
``delivery``) -> verify (SHA-256/MD5, then the Ed25519 signature: ``trust``) -> stage
(unpack safely, validate in a child process, promote: ``staging``) -> publish (manifest,
rollout, prune, announce: ``publish``). ``status`` alone writes what the twin is told.

Rules that keep a device in the desert serving:
* nothing is published until the new model loaded and ran in validation; any failure
  leaves the manifest, and so the serving model, untouched, and is reported with a
  reason from ``service.update.failures``;
* a desired document is handled once (``inbox.HandledRecord``), and a newer document
  cancels a download of an older target;
* network failures that outlast the downloader's retries are retried later, not dropped;
* outside the download windows an update waits, reported as ``scheduled``;
* a model that would outgrow the memory budget is refused before its download
  (``memory_budget``), and again at publish with its real size;
* of a model's variants (``model.variants``) only the one this CPU should run is
  downloaded; one that fails its verification here makes way for the next
  (``service.update.variants``), and the serving model is never touched meanwhile.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Callable

from service import metrics
from service.repository import ModelRepository, read_bundle_record
from service.twin.base import TwinSource
from service.update import failures, variants
from service.update.bundle import UnpackLimits
from service.update.delivery import BundleDelivery, DeliveryConfig, Scheduled
from service.update.desired import DesiredError, DesiredModel, DesiredState, parse_desired
from service.update.failures import UpdateFailed
from service.update.fetch import DownloadPolicy, DownloadProgress
from service.update.inbox import DesiredInbox, HandledRecord, fingerprint
from service.update.memory_budget import MemoryBudget
from service.update.publish import PublishConfig, Publisher
from service.update.rollout import RolloutMonitor
from service.update.schedule import DownloadWindow
from service.update.signing import TrustedKey
from service.update.staging import Stager
from service.update.status import ModelStatus, progress_record
from service.update.trust import Trust
from service.update.validation import ValidatedModel, recorded_verdict
from service.update.verify import VerifyError, verify_file
from twinfer.cpu import Int8Support
from twinfer.manifest import ManifestError, ModelEntry, read_manifest, unpublish

log = logging.getLogger("twinfer.updater")


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
    trusted_keys: tuple[TrustedKey, ...] | None = None  # see service.update.trust.Trust
    trusted_keys_error: str | None = None  # why the configured keys could not be loaded
    windows: tuple[DownloadWindow, ...] = ()  # the device's download windows; empty = always open
    clock: Callable[[], datetime] = local_now
    memory_budget: MemoryBudget = MemoryBudget(None)
    int8: Int8Support = Int8Support(False, "int8 support not checked", ())  # whether int8 variants run well here


class ModelUpdater:
    def __init__(
        self, repo: ModelRepository, twin: TwinSource, status: ModelStatus, rollout: RolloutMonitor,
        handled: HandledRecord, config: UpdaterConfig, lane: str | None = None,
    ) -> None:
        """``status`` was restored from ``handled`` (``ModelStatus(reporter, handled.outcome)``)
        and is shared with the rollout monitor. ``lane``: the model's name for a lane of
        ``models`` (its document without a model removes it); None: the default model."""
        self.lane = lane
        self.repo = repo
        self.config = config
        self.status = status
        self.inbox = DesiredInbox()
        self._handled = handled
        self._attempt: str | None = None  # the fingerprint whose handling status.last_error belongs to
        self._trust = Trust(repo.store, config.trusted_keys, config.trusted_keys_error)
        self._delivery = BundleDelivery(
            DeliveryConfig(config.policy, config.limits, config.windows, config.clock), repo, self.inbox.cancel,
            self._on_progress,
        )
        self._stager = Stager(repo, config.limits, config.validate_timeout)
        self._publisher = Publisher(
            repo, twin, status, rollout, self._trust,
            PublishConfig(config.keep_versions, config.rollout_timeout, config.model_output, config.memory_budget), lane,
        )
        self._rollout = rollout
        self._rejections = variants.Rejections()
        self._thread = threading.Thread(target=self._run, name=f"model-updater-{lane or 'default'}", daemon=True)

    def on_desired(self, document: dict, full: bool) -> None:
        """Twin callback (any thread)."""
        self.inbox.put(document, full)

    def start(self, startup_problems: list[str] | None = None) -> None:
        """Report what serves (and, from ``service.bootstrap``, the damaged versions it
        replaced at start-up), then follow the twin."""
        manifest = self._serving()
        if manifest is not None:  # the bootstrapped default, or what ran before rollback protection existed
            self._trust.note_activated(manifest.name, manifest.version)
        if startup_problems:
            self.status.note_error(failures.DAMAGED_MODEL, "; ".join(startup_problems))
        metrics.STAGED_VERSIONS.set(len(self.repo.versions()))
        if manifest is not None or self.lane is None:
            self.status.active(manifest, state=self._handled.outcome.get("state") or "active")
        self._thread.start()

    def _serving(self) -> ModelEntry | None:
        """What the manifest serves for this lane."""
        manifest = read_manifest(self.repo.store)
        return manifest.entry(self.lane) if manifest else None

    def stop(self, timeout: float = 10.0) -> None:
        self.inbox.close()
        self._thread.join(timeout)

    def _run(self) -> None:
        while (document := self.inbox.take()) is not None:
            try:
                delay = self.apply(document)
                if delay is not None:
                    self.inbox.retry_in(delay)
            except Exception:  # a bug must not kill the updater thread
                log.exception("model update crashed")
                self._fail(failures.INTERNAL, "internal error in the update pipeline; see the module log")

    # --- one document -------------------------------------------------------------------

    def apply(self, document: dict) -> float | None:
        """Handle one desired document; returns the seconds after which to try it again
        (a flaky link, a closed download window), or None when it is done."""
        mark = fingerprint(document)
        if mark == self._handled.fingerprint:
            log.debug("desired %s already handled", mark)
            return None
        version = document.get("$version")
        self.status.new_document(version if isinstance(version, int) else None, fresh=mark != self._attempt)
        self._attempt = mark
        try:
            state = parse_desired(document)
        except DesiredError as exc:
            self.status.aim(None)
            self._fail(failures.MALFORMED_DESIRED, str(exc))
            self._mark_handled(mark, "failed")
            return None
        if state.model is None and self.lane is not None:
            return self._remove(mark)
        if state.model is None:
            self.status.aim(None)
            self.status.active(self._serving())
            self._mark_handled(mark, "active")
            return None
        target = state.model
        self.status.aim(target)
        started = time.monotonic()
        self.inbox.working_on(target)
        self._rejections.start(mark)
        try:
            manifest = self._bring_in(state)
        except Scheduled as wait:
            log.info("%s %s: %s; waiting until %s", target.name, target.version, wait.why,
                     wait.opens.isoformat(timespec="minutes"))
            self.status.step(target, "scheduled", scheduled_for=wait.opens.isoformat(timespec="seconds"),
                             progress=None, waiting_for=wait.why)
            return max(1.0, (wait.opens - self.config.clock()).total_seconds())
        except UpdateFailed as exc:
            if exc.reason == failures.CANCELLED:
                log.info("update to %s %s cancelled by a newer desired document", target.name, target.version)
                return None
            metrics.DOWNLOAD_FAILURES.labels(exc.reason).inc()
            metrics.UPDATES.labels("failed").inc()
            serving = self._serving() if exc.state == "rolled_back" else None
            self._fail(exc.reason, exc.message, "retrying" if exc.retryable else exc.state, serving, exc.figures)
            if exc.retryable:
                return self.config.retry_seconds
            self._mark_handled(mark, exc.state)
            return None
        finally:
            metrics.DOWNLOAD_RATE.labels(target.name).set(0)
            self.repo.tidy_downloads(target.name)
            self.inbox.working_on(None)
        self._mark_handled(mark, "active")
        log.info(
            "%s %s active as generation %d after %.1f s", manifest.name, manifest.version, manifest.generation,
            time.monotonic() - started,
        )
        return None

    def _remove(self, mark: str) -> None:
        """This model left the desired ``models``: out of the manifest (the workers unload it)."""
        self.status.aim(None)
        manifest = read_manifest(self.repo.store)
        if manifest is not None and manifest.default == self.lane:
            self._fail(failures.DEFAULT_NOT_REMOVABLE, f"{self.lane} is the default model and keeps serving; set the "
                                                       f"twin's model to another model to replace it")
            self._mark_handled(mark, "failed")
            return None
        if manifest is not None and self.lane in manifest.models:
            try:
                unpublish(self.repo.store, self.lane)
            except ManifestError as exc:  # it became the default meanwhile: the default lane describes it
                log.info("%s not removed: %s", self.lane, exc)
            else:
                log.info("%s removed from the pool", self.lane)
        self.repo.drop_downloads_except(self.lane, None)
        self.repo.tidy_downloads(self.lane)
        self.status.removed()
        self._mark_handled(mark, "removed")
        return None

    def _bring_in(self, state: DesiredState) -> ModelEntry:
        target = state.model
        assert target is not None
        choice = variants.choose(target, self.config.int8)
        if target.variants:
            self.status.note_variant(**choice.report())
        current = self._serving()
        if current is not None and (current.name, current.version) == (target.name, target.version):
            if target.variants:
                self._check_serving_bundle(target, choice, current)
            if current.score_threshold != state.score_threshold:
                return self._publisher.publish(replace(target, variant=current.variant), current.format,
                                               current.decoder, state.score_threshold)
            self.status.clear_error()
            self.status.active(current)
            return current
        self._trust.check_downgrade(target)
        if target.variants:
            choice.usable()
        if self.repo.has(target.name, target.version):
            staged = self._staged_bundle(target, choice)
            if staged is not None:
                # Already staged (e.g. a rollback by twin): no download, and no second
                # validation when the first one's verdict still matches the model file.
                self.status.step(target, "staging", download=None)  # nothing downloaded for this document
                self._trust.check_staged(staged, self.repo.version_dir(target.name, target.version))
                return self._publish(staged, self._stager.staged(staged), state)
        if target.url is None and not target.variants:
            raise UpdateFailed(failures.NOT_IN_STORE, f"{target.name} {target.version} is not in this device's store "
                                                      f"and the twin gives no model.url to download it from")
        return self._first_that_serves(choice, state)

    def _check_serving_bundle(self, target: DesiredModel, choice: variants.VariantChoice, current: ModelEntry) -> None:
        """The version the twin names serves already: it must be one of the variants the twin
        offers this CPU (a serving directory is never replaced in place)."""
        directory = current.model_dir(self.repo.store)
        if variants.staged_match(choice, read_bundle_record(directory)) is None:
            raise self._mismatch(target, "serves")
        verdict = recorded_verdict(directory)
        self.status.note_variant(name=current.variant, verification=verdict.verification if verdict else None)

    @staticmethod
    def _mismatch(target: DesiredModel, where: str) -> UpdateFailed:
        return UpdateFailed(failures.VARIANT_MISMATCH, (
            f"{target.name} {target.version} {where} here from a bundle (by SHA-256) that is none of the variants "
            f"model.variants offers this device; a version is staged from one bundle and a serving or rollback "
            f"version is never replaced: roll the new bundles out as a new version"))

    def _staged_bundle(self, target: DesiredModel, choice: variants.VariantChoice) -> DesiredModel | None:
        """The version is in the store: which of the twin's bundles it was staged from. When
        none of the twin's variants is that bundle, the staged copy goes and a variant is
        downloaded, unless it serves or is the version a failing rollout goes back to."""
        if not target.variants:
            return target
        directory = self.repo.version_dir(target.name, target.version)
        match = variants.staged_match(choice, self.repo.bundle_record(target.name, target.version))
        if match is not None:
            return match
        manifest = read_manifest(self.repo.store)
        if manifest is not None and any(e.model_dir(self.repo.store) == directory for e in manifest.models.values()):
            raise self._mismatch(target, "serves")
        if self._rollout.goes_back_to(self.repo.relative(directory)):
            raise self._mismatch(target, "is the version a failing rollout goes back to")
        log.info("%s %s: the staged copy is none of the twin's variants; staging a variant instead",
                 target.name, target.version)
        self.repo.remove_version(target.name, target.version)
        return None

    def _first_that_serves(self, choice: variants.VariantChoice, state: DesiredState) -> ModelEntry:
        """Download, verify and stage the candidates in order until one passes: a variant
        that fails for a reason of its own (``variants.falls_through``) makes way for the
        next, reported under ``variant.rejected`` and not tried again while this document is
        retried; any other failure ends the attempt."""
        failed: UpdateFailed | None = None
        for candidate in choice.candidates:
            if self._rejections.refused(candidate):
                continue
            try:
                validated = self._download_and_stage(candidate, state)
            except UpdateFailed as exc:
                if not (state.model and state.model.variants) or not variants.falls_through(exc):
                    raise
                log.warning("%s %s variant %s rejected (%s): %s", candidate.name, candidate.version,
                            candidate.variant, exc.reason, exc.message)
                metrics.VARIANTS_REJECTED.labels(candidate.name, candidate.variant or "", exc.reason).inc()
                self._rejections.add(candidate, exc)
                self.status.note_variant(rejected=self._rejections.report())
                failed = exc
                continue
            return self._publish(candidate, validated, state)
        raise failed or UpdateFailed(failures.VARIANT_REJECTED, "every variant was refused on this device already")

    def _publish(self, bundle: DesiredModel, validated: ValidatedModel, state: DesiredState) -> ModelEntry:
        if state.model is not None and state.model.variants:
            self.status.note_variant(name=bundle.variant, verification=validated.verification)
        return self._publisher.publish(bundle, validated.format, validated.decoder, state.score_threshold)

    def _download_and_stage(self, target: DesiredModel, state: DesiredState) -> ValidatedModel:
        """One bundle: fetched (delta, compressed or full), verified, staged; not published."""
        if target.size is not None:  # nothing is fetched for a model that cannot fit
            self.config.memory_budget.check(self.repo.store, read_manifest(self.repo.store), target.name,
                                            target.version, target.size)
        part = self.repo.download_path(target.name, target.version)
        self.repo.drop_downloads_except(target.name, part)
        delivery = self._delivery.deliver(target, part, state)
        self.status.step(target, "verifying", download=delivery.report())
        try:
            # sha256 computed even if only md5 was given; a patched bundle was checked already
            sha256, md5 = delivery.digests or verify_file(part, target.sha256, target.md5)
            self._trust.check_signature(target, sha256)
        except (VerifyError, ValueError) as exc:
            part.unlink(missing_ok=True)
            raise UpdateFailed(failures.CHECKSUM_MISMATCH, str(exc)) from None
        except UpdateFailed:
            part.unlink(missing_ok=True)
            raise
        self.status.step(target, "staging")
        return self._stager.stage(part, target, sha256, md5)

    def _on_progress(self, target: DesiredModel, progress: DownloadProgress | None) -> None:
        """A download started (None) or made a step worth telling the twin."""
        self.status.step(target, "downloading", progress=None if progress is None else progress_record(progress))

    def _fail(self, reason: str, message: str, state: str = "failed", serving: ModelEntry | None = None,
              figures: dict | None = None) -> None:
        log.error("model update failed (%s): %s", reason, message)
        self.status.failure(reason, message, state, serving, figures)

    def _mark_handled(self, mark: str, state: str) -> None:
        self._handled.save(mark, self.status.outcome(state))
