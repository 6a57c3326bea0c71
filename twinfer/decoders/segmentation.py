"""Segmentation models: one ``[1, H, W, C]`` (or ``[1, C, H, W]``) map of class scores.

Matched when the model's only output is a rank-4 map of at least 8x8 pixels. One channel
(MediaPipe's selfie segmentation, a foreground/background model) is a probability per
pixel, thresholded at ``score_threshold`` into background (0) and foreground (1); C
channels are C classes, the best per pixel. The map is cut to the picture's part of the
input (the letterbox border left out) and resized to the picture: probabilities
bilinearly before the threshold, class maps by nearest neighbour.
``decoder_options.activation``: ``sigmoid``/``softmax`` for logits, ``none``, or ``auto``;
``decoder_options.layout``: the map's ``NHWC``/``NCHW`` where it differs from the input's.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import cv2
import numpy as np

from twinfer.decoders import activation
from twinfer.decoders.base import DecodeParams, layout_of
from twinfer.imaging import Geometry
from twinfer.signature import ModelSignature
from twinfer.spec import LAYOUTS, NORMALIZE_PRESETS, InputSpec
from twinfer.tasks import SEGMENTATION, SegmentationMask

MIN_MAP_SIDE = 8


def _map_shape(signature: ModelSignature, layout: str | None = None) -> tuple[int, int, int, bool] | None:
    """(height, width, channels, channels_first) of the only output, or None. The map is
    laid out as ``layout`` says, else as the image input is: sizes cannot tell (ADE20K's
    150 classes outnumber a 128x128 map's rows)."""
    if len(signature.outputs) != 1 or not any(i.rank == 4 for i in signature.inputs):
        return None
    shape = signature.outputs[0].shape
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        return None
    first = (layout or layout_of(signature)) == "NCHW"
    channels, height, width = (shape[1], shape[2], shape[3]) if first else (shape[3], shape[1], shape[2])
    if min(height, width) < MIN_MAP_SIDE or not 1 <= channels <= 255:  # type: ignore[operator]
        return None
    return height, width, channels, first  # type: ignore[return-value]


class SegmentationDecoder:
    name: ClassVar[str] = "segmentation"
    task: ClassVar[str] = SEGMENTATION
    counts_background: ClassVar[bool] = True  # class 0 is background
    default_labels: ClassVar[tuple[str, ...]] = ("background", "foreground")

    @classmethod
    def matches(cls, signature: ModelSignature) -> bool:
        return _map_shape(signature) is not None

    @classmethod
    def default_input(cls, signature: ModelSignature) -> InputSpec:
        mean, std = NORMALIZE_PRESETS["zero_to_one"]  # MediaPipe's segmentation models
        return InputSpec(layout=layout_of(signature), color="RGB", resize="stretch", mean=mean, std=std)

    def __init__(self, signature: ModelSignature, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"activation", "layout"}
        if unknown:
            raise ValueError(f"unknown decoder_options {sorted(unknown)} for segmentation; known: activation, layout")
        layout = options.get("layout")
        if layout not in (None, *LAYOUTS):
            raise ValueError(f"decoder_options.layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        shape = _map_shape(signature, layout)
        if shape is None:
            raise ValueError("segmentation needs one rank-4 output map ([1, H, W, C] or [1, C, H, W], H, W >= 8)")
        _, _, self.channels, self._channels_first = shape
        self.num_classes = 2 if self.channels == 1 else self.channels
        self._activation = activation.activation_option(options)

    def extra_inputs(self, geometry: Any) -> dict[str, np.ndarray]:
        return {}

    def decode(self, outputs: Sequence[np.ndarray], geometry: Geometry, params: DecodeParams) -> SegmentationMask:
        assert isinstance(geometry, Geometry), "a mask is made for the whole picture (the loader chains no segmentation)"
        scores = outputs[0][0]
        if self._channels_first:
            scores = scores.transpose(1, 2, 0)
        height, width = scores.shape[:2]
        x0, y0, x1, y1 = geometry.content_box()
        rows = slice(round(y0 * height), max(round(y0 * height) + 1, round(y1 * height)))
        cols = slice(round(x0 * width), max(round(x0 * width) + 1, round(x1 * width)))
        scores = scores[rows, cols]
        size = (geometry.image_width, geometry.image_height)
        if self.channels == 1:
            # Resized as 0..255 bytes, thresholded in place: one byte per picture pixel (a float
            # map, its comparison and the class map took 6; a 7000x7000 picture, 288 MB).
            probability = activation.apply(scores[..., 0], self._activation, "sigmoid")
            levels = np.clip(probability * 255.0 + 0.5, 0, 255).astype(np.uint8)
            class_map = cv2.resize(levels, size, interpolation=cv2.INTER_LINEAR)
            cv2.threshold(class_map, round(params.score_threshold * 255) - 0.5, 1, cv2.THRESH_BINARY, dst=class_map)
        else:
            best = np.argmax(scores, axis=-1).astype(np.uint8)
            class_map = cv2.resize(best, size, interpolation=cv2.INTER_NEAREST)
        return SegmentationMask(class_map, self.num_classes)
