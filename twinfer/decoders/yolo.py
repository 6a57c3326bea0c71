"""Raw Ultralytics YOLO exports: one output, boxes still to be filtered and NMS'd.

YOLOv8 (and later) give ``[1, 4+nc, N]``: cx, cy, w, h in input pixels, then class
scores already sigmoided, no objectness. YOLOv5 gives ``[1, N, 5+nc]`` with an
objectness column, score = objectness * class score. The attribute axis is the smaller
of the two trailing dims; by default it says the variant (Ultralytics' export layouts),
and option ``variant`` ("v5"/"v8") overrides that for transposed exports. Option
``boxes`` is ``pixels`` (ONNX exports, the default) or ``normalized`` (Ultralytics'
TFLite exports give cx, cy, w, h already divided by the input size).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from twinfer.decoders.base import DecodeParams, Detections, input_size, layout_of, nms
from twinfer.imaging import Geometry
from twinfer.signature import ModelSignature
from twinfer.spec import NORMALIZE_PRESETS, InputSpec
from twinfer.tasks import DETECTION

VARIANTS = ("v5", "v8")
BOX_UNITS = ("pixels", "normalized")


def _attribute_dim(shape: tuple[int | None, ...]) -> int | None:
    """The smaller known trailing dim (the attributes; the other one counts boxes)."""
    known = [d for d in shape[1:] if d is not None]
    return min(known) if known else None


class YoloDecoder:
    name: ClassVar[str] = "yolo"
    task: ClassVar[str] = DETECTION
    counts_background: ClassVar[bool] = False
    default_labels: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def matches(cls, signature: ModelSignature) -> bool:
        inputs, outputs = signature.inputs, signature.outputs
        if len(inputs) != 1 or inputs[0].rank != 4 or len(outputs) != 1 or outputs[0].rank != 3:
            return False
        attributes = _attribute_dim(outputs[0].shape)
        return attributes is not None and attributes >= 5

    @classmethod
    def default_input(cls, signature: ModelSignature) -> InputSpec:
        mean, std = NORMALIZE_PRESETS["zero_to_one"]
        return InputSpec(layout=layout_of(signature), color="RGB", resize="letterbox", pad_value=114, mean=mean, std=std)

    def __init__(self, signature: ModelSignature, options: Mapping[str, Any]) -> None:
        self._variant: str | None = options.get("variant")
        if self._variant is not None and self._variant not in VARIANTS:
            raise ValueError(f"decoder_options.variant must be one of {', '.join(VARIANTS)}, got {self._variant!r}")
        units = options.get("boxes", "pixels")
        if units not in BOX_UNITS:
            raise ValueError(f"decoder_options.boxes must be one of {', '.join(BOX_UNITS)}, got {units!r}")
        width, height = input_size(signature, layout_of(signature))
        if units == "normalized":
            width = height = 1
        # Input pixels -> normalised to the input, so Geometry.to_image can finish the job.
        self._to_unit = np.array([1.0 / width, 1.0 / height, 1.0 / width, 1.0 / height], dtype=np.float32)

    def extra_inputs(self, geometry: Geometry) -> dict[str, np.ndarray]:
        return {}

    def decode(self, outputs: Sequence[np.ndarray], geometry: Geometry, params: DecodeParams) -> Detections:
        raw = outputs[0][0]
        attributes_first = raw.shape[0] <= raw.shape[1]
        attrs = raw if attributes_first else raw.T  # (attributes, boxes), a view either way
        variant = self._variant or ("v8" if attributes_first else "v5")
        threshold = params.score_threshold
        if variant == "v8":
            class_scores = attrs[4:]
            best = class_scores.max(axis=0)
            kept = np.flatnonzero(best >= threshold)
            class_ids = class_scores[:, kept].argmax(axis=0)
            scores = best[kept]
        else:
            objectness = attrs[4]
            # Class scores are <= 1, so objectness alone already rules most boxes out.
            kept = np.flatnonzero(objectness >= threshold)
            class_scores = attrs[5:, kept]
            class_ids = class_scores.argmax(axis=0)
            scores = objectness[kept] * class_scores[class_ids, np.arange(len(kept))]
        cx, cy, w, h = attrs[:4, kept].astype(np.float32)
        half_w, half_h = w * 0.5, h * 0.5
        boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
        boxes *= self._to_unit
        found = nms(boxes, scores, class_ids, params)
        return Detections(geometry.to_image(found.boxes), found.scores, found.class_ids)
