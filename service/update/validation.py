"""Validate a candidate model directory before anything is published.

The supervisor loads it with the same loader the workers use, detects (or reads) its
decoder, and runs a warm-up inference: a model that fails here never reaches a worker.
Downloaded models are validated in a child process (``python -m service validate``), so
a model that crashes the runtime, or eats memory, cannot take the supervisor with it.

A bundle with a verification set (``service.verification``: pictures and the reference
model's detections, written by the operator's ``bundle``) is checked against it on this
device's CPU; a model that agrees too little is refused as ``VariantRejected`` with the
measured figures, so the next variant the twin offers can be tried.

Validation then prepares the host artifact (``service.optimize``: the model optimised
for this host with its weights in a file every worker maps) and checks that it loads and
gives the original's outputs; when it cannot, workers load the original model and
staging goes on: the artifact saves memory, it is never a reason to refuse a model.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from service.child import ChildTimeout, run_job
from service.verification import VerificationError, verify
from twinfer.engines import EngineOptions, format_of
from twinfer.loader import ModelLoadError, find_model_file, load_model
from twinfer.manifest import write_atomic


@dataclass(frozen=True)
class ValidatedModel:
    format: str
    decoder: str
    input_width: int
    input_height: int
    labels: int
    shared_weights: bool = False  # a host artifact is ready: workers share the weights
    verification: dict | None = None  # the agreement with the bundle's verification set, when it has one


VERDICT_FILE = ".twinfer-validated.json"


def _model_identity(directory: Path) -> dict:
    model_file = find_model_file(directory)
    return {"model_file": model_file.name, "model_size": model_file.stat().st_size}


def record_verdict(directory: Path, validated: ValidatedModel) -> None:
    """Remember a passed validation inside the version directory, so re-activating a
    staged version (a rollback by twin) costs no second validation on a busy device."""
    write_atomic(directory / VERDICT_FILE, json.dumps({**asdict(validated), **_model_identity(directory)}).encode())


def recorded_verdict(directory: Path) -> ValidatedModel | None:
    """The recorded verdict, if it is there and still describes the model file."""
    try:
        raw = json.loads((directory / VERDICT_FILE).read_text())
        identity = _model_identity(directory)
    except (OSError, ValueError, ModelLoadError):
        return None
    if any(raw.pop(key, None) != value for key, value in identity.items()):
        return None
    try:
        return ValidatedModel(**raw)
    except TypeError:
        return None


# Below the updater's validation timeout (300 s), so a slow preparation is dropped
# rather than failing the validation it runs in.
PREPARE_TIMEOUT_IN_VALIDATION = 180.0


def validate_model_dir(directory: Path, name: str, version: str, prepare: bool = True) -> ValidatedModel:
    """Raises ``twinfer.loader.ModelLoadError`` (or the runtime's error) with the reason.

    The original model file is what is validated; ``prepare`` then builds (or keeps) the
    host artifact, which never raises."""
    model = load_model(directory, name, version, EngineOptions(intra_op_threads=1, use_host_artifacts=False))
    model.warm_up()
    agreement = verify(model, directory)  # VerificationError: below the gate, or a malformed set
    validated = ValidatedModel(
        format=format_of(find_model_file(directory)),
        decoder=model.spec.decoder,
        input_width=model.input_width,
        input_height=model.input_height,
        labels=len(model.labels),
        verification=agreement.report() if agreement is not None else None,
    )
    del model
    if prepare:
        from service.optimize import prepare_host_artifacts

        prepared = prepare_host_artifacts(directory, timeout=PREPARE_TIMEOUT_IN_VALIDATION)
        validated = replace(validated, shared_weights=prepared.ok)
    record_verdict(directory, validated)
    return validated


class StagingError(Exception):
    """The candidate did not validate; the message says why."""


class VariantRejected(StagingError):
    """The candidate loads and runs, but on this CPU it agrees too little with the
    reference model of its verification set; ``agreement``: the measured figures."""

    def __init__(self, message: str, agreement: dict) -> None:
        super().__init__(message)
        self.agreement = agreement


def validate_in_subprocess(directory: Path, name: str, version: str, timeout: float = 300.0) -> ValidatedModel:
    """``validate_model_dir`` in a fresh interpreter (``python -m service validate``)."""
    try:
        done = run_job("service", ["validate", str(directory), "--name", name, "--version", version], timeout)
    except ChildTimeout as exc:
        raise StagingError(f"validation {exc}") from None
    if done.verdict is None:
        raise StagingError(f"validation crashed ({done.crash_summary()})")
    if isinstance(done.verdict.get("rejected"), dict):
        raise VariantRejected(done.verdict.get("error", "below the verification gate"), done.verdict["rejected"])
    if done.returncode != 0 or "error" in done.verdict:
        raise StagingError(done.verdict.get("error", f"validation failed (exit {done.returncode})"))
    try:
        return ValidatedModel(**done.verdict)
    except TypeError as exc:
        raise StagingError(f"validation gave an unreadable verdict: {exc}") from None


def validation_verdict(directory: Path, name: str, version: str) -> tuple[int, str]:
    """What ``python -m service validate`` prints: exit code and one JSON line."""
    try:
        return 0, json.dumps(asdict(validate_model_dir(directory, name, version)))
    except VerificationError as exc:
        rejected = {"rejected": exc.agreement.report()} if exc.agreement is not None else {}
        return 1, json.dumps({"error": str(exc), **rejected})
    except Exception as exc:  # any failure is a verdict, reported to the twin
        return 1, json.dumps({"error": str(exc)})
