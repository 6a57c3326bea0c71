"""A verified bundle -> a validated version in the store, or nothing.

The bundle is unpacked (safely: ``service.update.bundle``) into a fresh staging directory,
validated in a child process (``service.update.validation``), recorded (its SHA-256, the
base of signature checks on a later re-activation) and kept beside the model (the base
of the next delta), and only then renamed into the store. Any failure removes the
staging directory: the store never holds a half-staged version.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

from service.repository import ModelRepository
from service.update import failures
from service.update.bundle import BundleError, UnpackLimits, unpack_bundle
from service.update.desired import DesiredModel
from service.update.failures import UpdateFailed
from service.update.validation import (
    StagingError,
    ValidatedModel,
    VariantRejected,
    recorded_verdict,
    validate_in_subprocess,
)
from twinfer.engines import ENGINE_FORMATS
from twinfer.manifest import write_atomic
from twinfer.store_layout import BUNDLE_FILE, BUNDLE_RECORD


class Stager:
    def __init__(self, repo: ModelRepository, limits: UnpackLimits, validate_timeout: float) -> None:
        self._repo = repo
        self._limits = limits
        self._validate_timeout = validate_timeout

    def stage(self, part: Path, target: DesiredModel, sha256: str, md5: str) -> ValidatedModel:
        """Unpack, validate, record and promote the bundle in ``part`` (consumed either way)."""
        candidate = self._repo.new_staging_dir(f"{target.name}-{target.version}")
        try:
            self._unpack(part, target, candidate)
            validated = self.validate(candidate, target)
            # Written after unpacking, so a bundle cannot bring its own record.
            record = {"sha256": sha256, "md5": md5, "size": part.stat().st_size, "file_name": target.file_name,
                      "variant": target.variant}
            write_atomic(candidate / BUNDLE_RECORD, json.dumps(record).encode())
            os.replace(part, candidate / BUNDLE_FILE)
            self._repo.promote(candidate, target.name, target.version)
        except BaseException:
            shutil.rmtree(candidate, ignore_errors=True)
            raise
        finally:
            part.unlink(missing_ok=True)
        return validated

    def staged(self, target: DesiredModel) -> ValidatedModel:
        """A version already in the store: its recorded verdict while it still describes the
        model file (no second validation on a busy device), else a fresh validation."""
        directory = self._repo.version_dir(target.name, target.version)
        return recorded_verdict(directory) or self.validate(directory, target)

    def validate(self, directory: Path, target: DesiredModel) -> ValidatedModel:
        try:
            return validate_in_subprocess(directory, target.name, target.version, self._validate_timeout)
        except VariantRejected as exc:
            raise UpdateFailed(failures.VARIANT_REJECTED, str(exc), figures=exc.agreement) from None
        except StagingError as exc:
            raise UpdateFailed(failures.INVALID_MODEL, str(exc)) from None

    def _unpack(self, part: Path, target: DesiredModel, candidate: Path) -> None:
        """A ZIP bundle, or (for convenience) a bare .onnx/.tflite file."""
        suffix = Path(target.file_name).suffix.lower()
        if suffix in ENGINE_FORMATS and not zipfile.is_zipfile(part):
            shutil.copyfile(part, candidate / f"model{suffix}")
            return
        try:
            unpack_bundle(part, candidate, self._limits)
        except BundleError as exc:
            raise UpdateFailed(failures.bad_bundle(exc.reason), str(exc)) from None
