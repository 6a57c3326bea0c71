"""Validate a candidate model directory before anything is published.

The supervisor loads it with the same loader the workers use, detects (or reads) its
decoder, and runs a warm-up inference: a model that fails here never reaches a worker.
Downloaded models are validated in a child process (``python -m service validate``), so
a model that crashes the runtime, or eats memory, cannot take the supervisor with it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from workers.engines import ENGINE_FORMATS, EngineOptions
from workers.loader import find_model_file, load_model


@dataclass(frozen=True)
class ValidatedModel:
    format: str
    decoder: str
    input_width: int
    input_height: int
    labels: int


def validate_model_dir(directory: Path, name: str, version: str) -> ValidatedModel:
    """Raises ``workers.loader.ModelLoadError`` (or the runtime's error) with the reason."""
    model = load_model(directory, name, version, EngineOptions(intra_op_threads=1))
    model.warm_up()
    return ValidatedModel(
        format=ENGINE_FORMATS[find_model_file(directory).suffix.lower()],
        decoder=model.spec.decoder,
        input_width=model.input_width,
        input_height=model.input_height,
        labels=len(model.labels),
    )


class StagingError(Exception):
    """The candidate did not validate; the message says why."""


def validate_in_subprocess(directory: Path, name: str, version: str, timeout: float = 300.0) -> ValidatedModel:
    """``validate_model_dir`` in a fresh interpreter; its JSON verdict comes back on stdout."""
    command = [sys.executable, "-m", "service", "validate", str(directory), "--name", name, "--version", version]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout, cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        raise StagingError(f"validation did not finish in {timeout:.0f} s") from None
    try:
        verdict = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise StagingError(f"validation crashed (exit {done.returncode}): {' | '.join(tail)}") from None
    if done.returncode != 0 or "error" in verdict:
        raise StagingError(verdict.get("error", f"validation failed (exit {done.returncode})"))
    return ValidatedModel(**verdict)


def validation_verdict(directory: Path, name: str, version: str) -> tuple[int, str]:
    """What ``python -m service validate`` prints: exit code and one JSON line."""
    try:
        return 0, json.dumps(asdict(validate_model_dir(directory, name, version)))
    except Exception as exc:  # any failure is a verdict, reported to the twin
        return 1, json.dumps({"error": str(exc)})
