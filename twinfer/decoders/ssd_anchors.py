"""Raw SSD outputs (box encodings + class logits) decoded against MediaPipe anchors.

Why: SSD exports that stop before ``TFLite_Detection_PostProcess`` (MediaPipe's OIDv4
SSD MobileNetV2 and its ONNX conversion) leave anchor decoding, scoring and NMS to the
caller. Defaults are that model's ``SsdAnchorsCalculator`` options; another SSD sets its
own through ``decoder_options`` in ``twinfer.json``.
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
from twinfer.tasks import DETECTION


def _output_indices(signature: ModelSignature) -> tuple[int, int]:
    """(box encodings, class logits) positions in the runtime's output order: the one
    ending in 4 holds boxes; if both do, the one whose name says "box"."""
    last_dims = [o.shape[-1] for o in signature.outputs]
    if last_dims.count(4) == 1:
        boxes = last_dims.index(4)
    else:
        named = [i for i, o in enumerate(signature.outputs) if "box" in o.name.lower()]
        if len(named) != 1:
            raise ValueError("both SSD outputs end in 4; cannot tell box encodings from class logits by name")
        boxes = named[0]
    return boxes, 1 - boxes


class SsdAnchorsDecoder:
    """Box encodings ``[1, A, 4]`` (ty, tx, th, tw) and logits ``[1, A, C]``, class 0 background."""

    name: ClassVar[str] = "ssd_anchors"
    task: ClassVar[str] = DETECTION
    counts_background: ClassVar[bool] = True
    default_labels: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def matches(cls, signature: ModelSignature) -> bool:
        dims = per_anchor_output_dims(signature)
        if dims is None:
            return False
        a, b = dims[0] or 0, dims[1] or 0
        return (a == 4 and b >= 2) or (b == 4 and a >= 2)

    @classmethod
    def default_input(cls, signature: ModelSignature) -> InputSpec:
        mean, std = NORMALIZE_PRESETS["minus_one_to_one"]
        return InputSpec(layout=layout_of(signature), color="RGB", resize="stretch", mean=mean, std=std)

    def __init__(self, signature: ModelSignature, options: Mapping[str, Any]) -> None:
        if not self.matches(signature):
            raise ValueError("ssd_anchors needs two outputs [1, A, 4] and [1, A, C] and a rank-4 image input")
        width, height = input_size(signature, layout_of(signature))
        defaults = AnchorOptions(
            input_width=width,
            input_height=height,
            num_layers=6,
            min_scale=0.2,
            max_scale=0.95,
            strides=(16, 32, 64, 128, 256, 512),
            aspect_ratios=(1.0, 2.0, 0.5, 3.0, 1.0 / 3.0),
            reduce_boxes_in_lowest_layer=True,
        )
        anchor_options, scales = resolve_options(defaults, BoxScales(x=10.0, y=10.0, w=5.0, h=5.0), options)
        anchors = generate_anchors(anchor_options)
        self._box_index, self._logit_index = _output_indices(signature)
        count = signature.outputs[self._box_index].shape[1]
        if count != len(anchors):
            raise ValueError(
                f"the anchor options give {len(anchors)} anchors but the model has {count}; "
                "set decoder_options in twinfer.json to the model's SsdAnchorsCalculator options"
            )
        # Per-anchor factors folded once so decode is a multiply-add: yc = ty * (ah / y_scale) + ayc.
        self._anchor_center = anchors[:, 0:2]  # yc, xc
        self._anchor_size = anchors[:, 2:4]  # h, w
        self._center_gain = self._anchor_size / np.array([scales.y, scales.x], dtype=np.float32)
        self._size_gain = np.array([1.0 / scales.h, 1.0 / scales.w], dtype=np.float32)

    def extra_inputs(self, geometry: Geometry) -> dict[str, np.ndarray]:
        return {}

    def decode(self, outputs: Sequence[np.ndarray], geometry: Geometry, params: DecodeParams) -> Detections:
        """Best non-background class per anchor, threshold, then boxes for survivors only."""
        encodings = outputs[self._box_index][0]
        logits = outputs[self._logit_index][0]
        best = logits[:, 1:].argmax(axis=1)
        # float64: a very negative logit would overflow exp in float32.
        scores = sigmoid(logits[np.arange(len(best)), best + 1].astype(np.float64))
        keep = np.flatnonzero(scores >= params.score_threshold)
        if keep.size == 0:
            return Detections.empty()
        kept = encodings[keep]
        center = kept[:, 0:2] * self._center_gain[keep] + self._anchor_center[keep]
        half = np.exp(kept[:, 2:4] * self._size_gain) * self._anchor_size[keep] * 0.5
        boxes = np.hstack([(center - half)[:, ::-1], (center + half)[:, ::-1]])  # yx -> xmin ymin xmax ymax
        found = nms(boxes, scores[keep], best[keep] + 1, params)
        return Detections(geometry.to_image(found.boxes), found.scores, found.class_ids)
