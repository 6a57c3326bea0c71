"""Open a model directory (as staged in the repository) into a ``DetectionModel``.

A directory holds one ``.onnx`` or ``.tflite`` file, optionally a labels ``.txt`` and a
``twinfer.json`` metadata file. Missing metadata is detected from the signature.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from workers.decoders import decoder_by_name, detect_decoder
from workers.engines import ENGINE_FORMATS, EngineOptions, open_engine
from workers.labels import embedded_tflite_labels, label_offset, read_label_file
from workers.pipeline import DetectionModel
from workers.spec import ModelSpec, SpecError, apply_overrides

METADATA_FILE = "twinfer.json"


class ModelLoadError(Exception):
    """The directory does not hold a servable model; the message says why."""


def find_model_file(directory: Path) -> Path:
    candidates = sorted(p for p in directory.iterdir() if p.suffix.lower() in ENGINE_FORMATS and p.is_file())
    if len(candidates) != 1:
        raise ModelLoadError(
            f"{directory.name}: expected exactly one .onnx or .tflite file, found {[p.name for p in candidates]}"
        )
    return candidates[0]


def find_labels(directory: Path, model_path: Path) -> list[str]:
    texts = sorted(p for p in directory.glob("*.txt") if p.is_file())
    if texts:
        preferred = next((p for p in texts if "label" in p.name.lower() or "class" in p.name.lower()), texts[0])
        return read_label_file(preferred)
    if model_path.suffix.lower() == ".tflite":
        return embedded_tflite_labels(model_path) or []
    return []


def read_metadata(directory: Path) -> dict:
    path = directory / METADATA_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{METADATA_FILE} is not valid JSON: {exc}") from None


def load_model(
    directory: Path, name: str, version: str, options: EngineOptions, score_threshold: float | None = None
) -> DetectionModel:
    """Load, detect the decoder and preprocessing, and build the pipeline.

    ``score_threshold`` (the twin's inference setting) overrides the bundle's."""
    model_path = find_model_file(directory)
    metadata = read_metadata(directory)
    try:
        engine = open_engine(model_path, options)
    except Exception as exc:  # runtimes raise their own types for a bad file
        raise ModelLoadError(f"{model_path.name}: the runtime could not load it: {exc}") from exc
    try:
        signature = engine.signature
        decoder_cls = decoder_by_name(metadata["decoder"]) if "decoder" in metadata else detect_decoder(signature)
        defaults = ModelSpec(decoder=decoder_cls.name, input=decoder_cls.default_input(signature))
        spec = apply_overrides(defaults, metadata)
        if score_threshold is not None:
            spec = replace(spec, score_threshold=score_threshold)
        decoder = decoder_cls(signature, spec.decoder_options)
    except (SpecError, ValueError) as exc:
        raise ModelLoadError(f"{model_path.name}: {exc}") from exc
    labels = find_labels(directory, model_path) or list(decoder_cls.default_labels)
    offset = label_offset(labels, decoder_cls.counts_background)
    return DetectionModel(name, version, engine, decoder, spec, labels, offset)
