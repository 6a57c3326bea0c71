"""BlazeFace (MediaPipe face detection): raw regressors + one logit per anchor.

Why: the model ends before MediaPipe's TensorsToDetections, so anchors, box decoding
and NMS happen here. Defaults are face_detection_short_range's graph options (128x128
input, 896 anchors); other variants set theirs through ``decoder_options``. NMS uses the
bundle's ``iou_threshold`` (0.5 unless set); MediaPipe's graph uses 0.3, which a bundle
gets with ``"iou_threshold": 0.3`` in ``twinfer.json``. MediaPipe blends overlapping
boxes (weighted NMS); plain NMS keeps the best one, a few pixels apart at most.
Keypoints (the regressor values after the box) are not part of ``Detections``.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from twinfer.decoders.anchors import AnchorOptions, BoxScales, generate_anchors, resolve_options
from twinfer.decoders.base import (
    DecodeParams,
    Detections,
    input_size,
    layout_of,
    nms,
    per_anchor_output_dims,
    sigmoid,
)
from twinfer.imaging import Geometry
from twinfer.signature import ModelSignature
from twinfer.spec import NORMALIZE_PRESETS, InputSpec

# MediaPipe clips logits to this before the sigmoid (score_clipping_thresh).
SCORE_CLIP = 100.0


def _is_regressor_dim(dim: int | None) -> bool:
    """A box (4 values) plus k >= 1 keypoints (x, y each)."""
    return dim is not None and dim >= 6 and dim % 2 == 0


class BlazeFaceDecoder:
    """Regressors ``[1, A, 4 + 2k]`` (xc, yc, w, h, keypoints) and logits ``[1, A, 1]``; one class, "face"."""

    name: ClassVar[str] = "blazeface"
    counts_background: ClassVar[bool] = False
    default_labels: ClassVar[tuple[str, ...]] = ("face",)

    @classmethod
    def matches(cls, signature: ModelSignature) -> bool:
        dims = per_anchor_output_dims(signature)
        if dims is None:
            return False
        a, b = dims
        return (_is_regressor_dim(a) and b == 1) or (_is_regressor_dim(b) and a == 1)

    @classmethod
    def default_input(cls, signature: ModelSignature) -> InputSpec:
        mean, std = NORMALIZE_PRESETS["minus_one_to_one"]
        return InputSpec(
            layout=layout_of(signature), color="RGB", resize="letterbox", pad_value=0, mean=mean, std=std
        )

    def __init__(self, signature: ModelSignature, options: Mapping[str, Any]) -> None:
        if not self.matches(signature):
            raise ValueError("blazeface needs two outputs [1, A, 4 + 2k] and [1, A, 1] and a rank-4 image input")
        width, height = input_size(signature, layout_of(signature))
        defaults = AnchorOptions(
            input_width=width,
            input_height=height,
            num_layers=4,
            min_scale=0.1484375,
            max_scale=0.75,
            strides=(8, 16, 16, 16),
            aspect_ratios=(1.0,),
            fixed_anchor_size=True,
        )
        # Regressors are in input pixels, so the scales are the input size (128 for short range).
        box_scales = BoxScales(x=float(width), y=float(height), w=float(width), h=float(height))
        anchor_options, scales = resolve_options(defaults, box_scales, options)
        anchors = generate_anchors(anchor_options)
        self._score_index = [o.shape[-1] for o in signature.outputs].index(1)
        self._regressor_index = 1 - self._score_index
        count = signature.outputs[self._regressor_index].shape[1]
        if count != len(anchors):
            raise ValueError(
                f"the anchor options give {len(anchors)} anchors but the model has {count}; "
                "set decoder_options in twinfer.json to the model's SsdAnchorsCalculator options"
            )
        # Folded once: xc = rx * (aw / x_scale) + axc, w = rw * (aw / w_scale); x before y here.
        self._anchor_center = np.ascontiguousarray(anchors[:, [1, 0]])  # xc, yc
        anchor_size = anchors[:, [3, 2]]  # w, h
        self._center_gain = anchor_size / np.array([scales.x, scales.y], dtype=np.float32)
        self._half_size_gain = anchor_size / np.array([2.0 * scales.w, 2.0 * scales.h], dtype=np.float32)

    def extra_inputs(self, geometry: Geometry) -> dict[str, np.ndarray]:
        return {}

    def decode(self, outputs: Sequence[np.ndarray], geometry: Geometry, params: DecodeParams) -> Detections:
        """Threshold the clipped sigmoid scores, then decode boxes for survivors only."""
        regressors = outputs[self._regressor_index][0]
        logits = np.clip(outputs[self._score_index][0, :, 0], -SCORE_CLIP, SCORE_CLIP)
        scores = sigmoid(logits.astype(np.float64))  # exp(100) overflows float32
        keep = np.flatnonzero(scores >= params.score_threshold)
        if keep.size == 0:
            return Detections.empty()
        kept = regressors[keep]
        center = kept[:, 0:2] * self._center_gain[keep] + self._anchor_center[keep]
        half = kept[:, 2:4] * self._half_size_gain[keep]
        boxes = np.hstack([center - half, center + half])
        found = nms(boxes, scores[keep], np.zeros(keep.size, dtype=np.int64), params, class_agnostic=True)
        return Detections(geometry.to_image(found.boxes), found.scores, found.class_ids)
