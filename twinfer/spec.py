"""How a model wants its pixels and how its outputs are read: the bundle metadata schema.

A bundle may carry ``twinfer.json``; every key is optional and anything missing is
detected from the model's signature (see ``twinfer.decoders.detect``). Example::

    {"task": "detection", "decoder": "ssd_anchors",
     "input": {"layout": "NHWC", "color": "RGB", "resize": "stretch",
               "normalize": "minus_one_to_one"},
     "score_threshold": 0.5, "iou_threshold": 0.5, "max_detections": 100,
     "decoder_options": {"num_layers": 6}}

``task`` (``detection``, ``classification``, ``keypoints``, ``segmentation``) is needed
only where the signature does not tell; ``top_k`` is how many classes a classifier
answers; ``chain`` feeds the model crops of another model's detections
(``twinfer.chain_spec``).

``normalize`` is ``none`` (0..255), ``zero_to_one``, ``minus_one_to_one`` or
``{"mean": [r, g, b], "std": [r, g, b]}`` in 0..255 units; it applies to float inputs and
to quantised integer inputs (normalised, then quantised with the input's scale and zero
point: ``twinfer.quantized_io``); a uint8 input without a quantization takes raw pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping

from twinfer.tasks import DETECTION

if TYPE_CHECKING:
    from twinfer.chain_spec import ChainSpec

NORMALIZE_PRESETS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "zero_to_one": ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
    "minus_one_to_one": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
}
LAYOUTS = ("NHWC", "NCHW")
TOP_K_LIMIT = 1000  # classes a classifier may be asked to list
COLORS = ("RGB", "BGR")
RESIZES = ("stretch", "letterbox")


class SpecError(ValueError):
    """The metadata file is malformed; the message says which key and why."""


@dataclass(frozen=True)
class InputSpec:
    """Pixel preparation. ``mean``/``std`` are per channel, in the model's colour order."""

    layout: str = "NHWC"
    color: str = "RGB"
    resize: str = "stretch"
    pad_value: int = 0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ModelSpec:
    decoder: str
    input: InputSpec
    task: str = DETECTION
    score_threshold: float = 0.5
    iou_threshold: float = 0.5
    max_detections: int = 100
    top_k: int = 5
    decoder_options: Mapping[str, Any] = field(default_factory=dict)
    chain: ChainSpec | None = None  # parsed by ``twinfer.chain_spec`` (the loader): it names another model


def _choice(value: Any, allowed: tuple[str, ...], key: str) -> str:
    if value not in allowed:
        raise SpecError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _unit_float(value: Any, key: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise SpecError(f"{key} must be a number between 0 and 1, got {value!r}")
    return float(value)


def _triple(value: Any, key: str) -> tuple[float, float, float]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise SpecError(f"{key} must be a list of three numbers, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def parse_normalize(value: Any) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    if isinstance(value, str):
        if value not in NORMALIZE_PRESETS:
            raise SpecError(f"input.normalize must be one of {', '.join(NORMALIZE_PRESETS)} or {{mean, std}}")
        return NORMALIZE_PRESETS[value]
    if isinstance(value, Mapping):
        mean, std = _triple(value.get("mean"), "input.normalize.mean"), _triple(value.get("std"), "input.normalize.std")
        if any(s == 0 for s in std):
            raise SpecError("input.normalize.std must not contain 0")
        return mean, std
    raise SpecError(f"input.normalize must be a preset name or {{mean, std}}, got {value!r}")


def apply_overrides(defaults: ModelSpec, metadata: Mapping[str, Any]) -> ModelSpec:
    """Lay a bundle's metadata over the detected defaults, validating every key."""
    if not isinstance(metadata, Mapping):
        raise SpecError("metadata must be a JSON object")
    known = {"task", "decoder", "input", "score_threshold", "iou_threshold", "max_detections", "top_k",
             "decoder_options", "chain"}
    unknown = set(metadata) - known
    if unknown:
        raise SpecError(f"unknown metadata keys: {', '.join(sorted(unknown))}")
    spec = defaults
    raw_input = metadata.get("input", {})
    if not isinstance(raw_input, Mapping):
        raise SpecError("input must be an object")
    unknown_input = set(raw_input) - {"layout", "color", "resize", "pad_value", "normalize"}
    if unknown_input:
        raise SpecError(f"unknown input keys: {', '.join(sorted(unknown_input))}")
    inp = spec.input
    if "layout" in raw_input:
        inp = replace(inp, layout=_choice(raw_input["layout"], LAYOUTS, "input.layout"))
    if "color" in raw_input:
        inp = replace(inp, color=_choice(raw_input["color"], COLORS, "input.color"))
    if "resize" in raw_input:
        inp = replace(inp, resize=_choice(raw_input["resize"], RESIZES, "input.resize"))
    if "pad_value" in raw_input:
        pad = raw_input["pad_value"]
        if not isinstance(pad, int) or isinstance(pad, bool) or not 0 <= pad <= 255:
            raise SpecError(f"input.pad_value must be an integer 0..255, got {pad!r}")
        inp = replace(inp, pad_value=pad)
    if "normalize" in raw_input:
        mean, std = parse_normalize(raw_input["normalize"])
        inp = replace(inp, mean=mean, std=std)
    spec = replace(spec, input=inp)
    if "decoder" in metadata:
        if not isinstance(metadata["decoder"], str):
            raise SpecError("decoder must be a string")
        spec = replace(spec, decoder=metadata["decoder"])
    if "score_threshold" in metadata:
        spec = replace(spec, score_threshold=_unit_float(metadata["score_threshold"], "score_threshold"))
    if "iou_threshold" in metadata:
        spec = replace(spec, iou_threshold=_unit_float(metadata["iou_threshold"], "iou_threshold"))
    for key, limit in (("max_detections", 10000), ("top_k", TOP_K_LIMIT)):
        if key in metadata:
            value = metadata[key]
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
                raise SpecError(f"{key} must be an integer 1..{limit}, got {value!r}")
            spec = replace(spec, **{key: value})
    if "decoder_options" in metadata:
        if not isinstance(metadata["decoder_options"], Mapping):
            raise SpecError("decoder_options must be an object")
        # Key by key over the defaults an export implies (see ``twinfer.ultralytics``).
        spec = replace(spec, decoder_options={**spec.decoder_options, **metadata["decoder_options"]})
    return spec
