"""MediaPipe's SsdAnchorsCalculator, for decoders that read raw SSD-style outputs.

Models exported before their post-processing (MediaPipe's OIDv4 SSD, BlazeFace) regress
offsets from a fixed grid of anchors that the file does not carry; MediaPipe rebuilds
that grid from a handful of options (``ssd_anchors_calculator.cc``), and so do we, under
the same option names so a bundle's ``decoder_options`` can be copied from its graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, NamedTuple

import numpy as np

BOX_SCALE_KEYS = ("x_scale", "y_scale", "w_scale", "h_scale")


@dataclass(frozen=True)
class AnchorOptions:
    """SsdAnchorsCalculatorOptions; the input size comes from the model, not the options."""

    input_width: int
    input_height: int
    num_layers: int
    min_scale: float
    max_scale: float
    strides: tuple[int, ...]
    aspect_ratios: tuple[float, ...]
    reduce_boxes_in_lowest_layer: bool = False
    interpolated_scale_aspect_ratio: float = 1.0
    anchor_offset_x: float = 0.5
    anchor_offset_y: float = 0.5
    fixed_anchor_size: bool = False


class BoxScales(NamedTuple):
    """TensorsToDetectionsCalculator's divisors for the regressed centre and size."""

    x: float
    y: float
    w: float
    h: float


OVERRIDABLE = tuple(f.name for f in fields(AnchorOptions) if not f.name.startswith("input_"))


def _number(key: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"decoder_options.{key} must be a number, got {value!r}")
    return float(value)


def _positive_number(key: str, value: Any) -> float:
    number = _number(key, value)
    if number <= 0:
        raise ValueError(f"decoder_options.{key} must be positive, got {value!r}")
    return number


def _coerce(key: str, value: Any) -> Any:
    """Check one override against the type of its option."""
    if key in ("reduce_boxes_in_lowest_layer", "fixed_anchor_size"):
        if not isinstance(value, bool):
            raise ValueError(f"decoder_options.{key} must be true or false, got {value!r}")
        return value
    if key == "num_layers":
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"decoder_options.num_layers must be a positive integer, got {value!r}")
        return value
    if key in ("strides", "aspect_ratios"):
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"decoder_options.{key} must be a non-empty list, got {value!r}")
        if key == "strides":
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                raise ValueError(f"decoder_options.strides must be positive integers, got {value!r}")
            return tuple(value)
        return tuple(_positive_number(key, v) for v in value)
    if key in ("min_scale", "max_scale"):
        return _positive_number(key, value)
    return _number(key, value)


def resolve_options(
    defaults: AnchorOptions, scales: BoxScales, overrides: Mapping[str, Any]
) -> tuple[AnchorOptions, BoxScales]:
    """Lay a bundle's ``decoder_options`` over a family's defaults, validating every key."""
    known = set(OVERRIDABLE) | set(BOX_SCALE_KEYS)
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown decoder_options {sorted(unknown)}; known: {', '.join(sorted(known))}")
    anchor_options = replace(defaults, **{k: _coerce(k, v) for k, v in overrides.items() if k in OVERRIDABLE})
    box_scales = BoxScales(
        *(
            _positive_number(key, overrides[key]) if key in overrides else default
            for key, default in zip(BOX_SCALE_KEYS, scales)
        )
    )
    return anchor_options, box_scales


def _scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    if count == 1:
        return (min_scale + max_scale) / 2
    return min_scale + (max_scale - min_scale) * index / (count - 1)


def generate_anchors(options: AnchorOptions) -> np.ndarray:
    """(A, 4) float32 anchors ``yc, xc, h, w`` normalised to the model input, in the
    order the model emits them (layer, row, column, anchor)."""
    o = options
    if len(o.strides) != o.num_layers:
        raise ValueError(
            f"decoder_options: num_layers is {o.num_layers} but strides has {len(o.strides)} entries; they must agree"
        )
    layers = []
    layer = 0
    while layer < o.num_layers:
        # Consecutive layers with the same stride share one feature map.
        heights: list[float] = []
        widths: list[float] = []
        last = layer
        while last < o.num_layers and o.strides[last] == o.strides[layer]:
            scale = _scale(o.min_scale, o.max_scale, last, o.num_layers)
            if last == 0 and o.reduce_boxes_in_lowest_layer:
                shapes = [(0.1, 1.0), (scale, 2.0), (scale, 0.5)]
            else:
                shapes = [(scale, ratio) for ratio in o.aspect_ratios]
                if o.interpolated_scale_aspect_ratio > 0:
                    following = 1.0 if last == o.num_layers - 1 else _scale(o.min_scale, o.max_scale, last + 1, o.num_layers)
                    shapes.append((math.sqrt(scale * following), o.interpolated_scale_aspect_ratio))
            for size, ratio in shapes:
                heights.append(size / math.sqrt(ratio))
                widths.append(size * math.sqrt(ratio))
            last += 1
        stride = o.strides[layer]
        rows, cols = math.ceil(o.input_height / stride), math.ceil(o.input_width / stride)
        yc, xc = np.meshgrid(
            (np.arange(rows) + o.anchor_offset_y) / rows, (np.arange(cols) + o.anchor_offset_x) / cols, indexing="ij"
        )
        grid = np.empty((rows, cols, len(heights), 4), dtype=np.float32)
        grid[..., 0] = yc[..., np.newaxis]
        grid[..., 1] = xc[..., np.newaxis]
        grid[..., 2] = 1.0 if o.fixed_anchor_size else np.asarray(heights)
        grid[..., 3] = 1.0 if o.fixed_anchor_size else np.asarray(widths)
        layers.append(grid.reshape(-1, 4))
        layer = last
    return np.concatenate(layers)
