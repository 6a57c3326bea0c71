"""Validate a candidate model directory before anything is published.

The supervisor loads it with the same loader the workers use, detects (or reads) its
decoder, and runs a warm-up inference: a model that fails here never reaches a worker.
"""
from __future__ import annotations

from dataclasses import dataclass
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
