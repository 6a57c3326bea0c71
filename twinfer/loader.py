"""Open a model directory (as staged in the repository) into a ``VisionModel``.

A directory holds one ``.onnx`` or ``.tflite`` file, optionally a labels ``.txt`` and a
``twinfer.json`` metadata file. Missing metadata is detected from the signature.

Precedence, most specific first: ``twinfer.json``, then a labels file, then what the
model file says about itself (Ultralytics' metadata, a TFLite metadata label file), then
the signature and ``class_N`` labels. The task is the decoder's: named in
``twinfer.json`` (``task``, ``decoder``) or detected from the signature.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from twinfer import ultralytics
from twinfer.chain_spec import parse_chain
from twinfer.decoders import Decoder, decoder_by_name, detect_decoder
from twinfer.decoders.base import layout_of
from twinfer.engines import ENGINE_FORMATS, Engine, EngineOptions, open_engine
from twinfer.labels import embedded_tflite_labels, label_offset, read_label_file
from twinfer.pipeline import VisionModel
from twinfer.quantized_io import passes_through
from twinfer.signature import TensorInfo
from twinfer.spec import ModelSpec, SpecError, apply_overrides
from twinfer.tasks import CLASSIFICATION, KEYPOINTS, TASKS

METADATA_FILE = "twinfer.json"
log = logging.getLogger("twinfer.loader")


class ModelLoadError(Exception):
    """The directory does not hold a servable model; the message says why."""


def find_model_file(directory: Path) -> Path:
    candidates = sorted(p for p in directory.iterdir() if p.suffix.lower() in ENGINE_FORMATS and p.is_file())
    if len(candidates) != 1:
        raise ModelLoadError(
            f"{directory.name}: expected exactly one .onnx or .tflite file, found {[p.name for p in candidates]}"
        )
    return candidates[0]


def find_labels(
    directory: Path, model_path: Path, embedded: ultralytics.UltralyticsMetadata | None, decoder: Decoder
) -> tuple[list[str], int]:
    """Labels and the offset of class id 0 in them: a labels file beside the model, else
    the export's own class names (ids exact, so no background offset), else a .tflite's
    metadata label file (an Ultralytics export's ZIP holds none), else the decoder's defaults."""
    labels: list[str] = []
    texts = sorted(p for p in directory.glob("*.txt") if p.is_file())
    if texts:
        preferred = next((p for p in texts if "label" in p.name.lower() or "class" in p.name.lower()), texts[0])
        labels = read_label_file(preferred)
    if not labels and embedded is not None and embedded.names:
        return list(embedded.names), 0
    if not labels and embedded is None and model_path.suffix.lower() == ".tflite":
        labels = embedded_tflite_labels(model_path) or []
    labels = labels or list(decoder.default_labels)
    return labels, label_offset(labels, decoder.counts_background, getattr(decoder, "class_count", None))


def embedded_metadata(model_path: Path, engine: Engine) -> ultralytics.UltralyticsMetadata | None:
    """Ultralytics' description of the export: ONNX metadata_props, or a .tflite's ZIP."""
    raw = engine.metadata
    if not raw and engine.format == "tflite":
        raw = ultralytics.tflite_metadata(model_path)
    return ultralytics.parse_metadata(raw, model_path.name)


def _warn_unless_pixels_pass_through(model_path: Path, image: TensorInfo, spec: ModelSpec) -> None:
    """A quantised input gets the picture normalised (``input.normalize``) and then quantised
    with its scale and zero point. A converter's full-integer model takes the pixels as they
    are (or - 128): when the two disagree, the normalisation (or the model) is likely wrong."""
    q = image.quantization
    if q is not None and not passes_through(spec.input.mean, spec.input.std, image.dtype, q):
        log.warning("%s: its %s input (scale %.6g, zero point %d) does not take the pixels as they are with "
                    "input.normalize mean %s std %s; the picture is normalised and quantised: check twinfer.json",
                    model_path.name, image.dtype, q.scale, q.zero_point, spec.input.mean, spec.input.std)


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
) -> VisionModel:
    """Load, detect the task, decoder and preprocessing, and build the pipeline.

    ``score_threshold`` (the twin's inference setting) overrides the bundle's."""
    model_path = find_model_file(directory)
    metadata = read_metadata(directory)
    try:
        engine = open_engine(model_path, options)
    except Exception as exc:  # runtimes raise their own types for a bad file
        raise ModelLoadError(f"{model_path.name}: the runtime could not load it: {exc}") from exc
    try:
        embedded = embedded_metadata(model_path, engine)
        signature = engine.signature
        if embedded is not None:
            if embedded.task not in (None, ultralytics.DETECT):
                raise ModelLoadError(
                    f"{model_path.name}: an Ultralytics {embedded.task!r} export; only {ultralytics.DETECT!r} models are served"
                )
            if embedded.imgsz is not None:
                signature = ultralytics.fill_input_size(signature, embedded.imgsz, layout_of(signature), model_path.name)
        task = metadata.get("task")
        if task is not None and task not in TASKS:
            raise SpecError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        decoder_cls = (decoder_by_name(metadata["decoder"], task) if "decoder" in metadata
                       else detect_decoder(signature, task))
        defaults = ModelSpec(
            decoder=decoder_cls.name,
            input=decoder_cls.default_input(signature),
            task=decoder_cls.task,
            # A classifier lists its top_k whatever their scores unless a threshold is set.
            score_threshold=0.0 if decoder_cls.task == CLASSIFICATION else ModelSpec.score_threshold,
            decoder_options=ultralytics.decoder_options(engine.format, decoder_cls.name) if embedded else {},
        )
        spec = apply_overrides(defaults, metadata)
        if "chain" in metadata:
            spec = replace(spec, chain=parse_chain(metadata["chain"]))
            if spec.task not in (CLASSIFICATION, KEYPOINTS):
                raise SpecError(f"chain: a {spec.task} model is not fed crops; chain a classifier or a landmark model")
        if score_threshold is not None:
            spec = replace(spec, score_threshold=score_threshold)
        decoder = decoder_cls(signature, spec.decoder_options)
    except (SpecError, ValueError) as exc:
        raise ModelLoadError(f"{model_path.name}: {exc}") from exc
    _warn_unless_pixels_pass_through(model_path, signature.image_input, spec)
    labels, offset = find_labels(directory, model_path, embedded, decoder)
    if getattr(decoder, "channels", None) == 1 and len(labels) == 1:
        labels = ["background", *labels]  # a one-channel mask's single label names its foreground
    return VisionModel(name, version, engine, decoder, spec, labels, offset, signature)
