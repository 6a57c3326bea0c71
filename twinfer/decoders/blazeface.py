"""BlazeFace-style detectors (MediaPipe's face, pose and palm detectors): raw regressors
(a box and k keypoints) + one logit per anchor.

Why: the models end before MediaPipe's TensorsToDetections, so anchors, box and keypoint
decoding and NMS happen here. The three MediaPipe detectors share the scheme and differ in
their graph options, told apart by their keypoint count (``PRESETS``: face 6, palm 7,
pose 4): anchors, pixel range and the class name. Other models set theirs through
``decoder_options`` and ``twinfer.json``. NMS uses the bundle's ``iou_threshold`` (0.5
unless set); MediaPipe's graphs use 0.3, which a bundle gets with ``"iou_threshold": 0.3``.
MediaPipe blends overlapping boxes (weighted NMS); plain NMS keeps the best one, a few
pixels apart at most. The keypoints are what a chained model's crop is rotated by
(``twinfer.crops``).
"""
from __future__ import annotations

from dataclasses import dataclass
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

# MediaPipe clips logits to this before the sigmoid (score_clipping_thresh).
SCORE_CLIP = 100.0


@dataclass(frozen=True)
class Preset:
    """One MediaPipe detector's graph options (``*_detection*.pbtxt``)."""

    label: str
    normalize: str  # a ``twinfer.spec.NORMALIZE_PRESETS`` name
    strides: tuple[int, ...]
    keypoint_names: tuple[str, ...]  # MediaPipe's documented order; () where it documents none


FOUR_LAYERS = (8, 16, 16, 16)  # face short range (128 px, 896 anchors), palm lite (192 px, 2016)
FIVE_LAYERS = (8, 16, 32, 32, 32)  # pose (224 px, 2254 anchors)
PRESETS: dict[int, Preset] = {  # by keypoint count
    6: Preset("face", "minus_one_to_one", FOUR_LAYERS,
              ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")),
    # Keypoint 0 is the wrist, 2 the middle finger's base: the hand crop's rotation.
    7: Preset("palm", "zero_to_one", FOUR_LAYERS, ()),
    # Centres of the hips and shoulders, each with a point on the circle around the body
    # (full, upper): the pose crop's centre and size.
    4: Preset("person", "minus_one_to_one", FIVE_LAYERS,
              ("hip_center", "full_body_circle", "shoulder_center", "upper_body_circle")),
}


def _keypoint_count(signature: ModelSignature) -> int:
    dims = [o.shape[-1] for o in signature.outputs]
    return (max(d or 0 for d in dims) - 4) // 2


def _preset(signature: ModelSignature) -> Preset:
    return PRESETS.get(_keypoint_count(signature), PRESETS[6])


def _is_regressor_dim(dim: int | None) -> bool:
    """A box (4 values) plus k >= 1 keypoints (x, y each)."""
    return dim is not None and dim >= 6 and dim % 2 == 0


class BlazeFaceDecoder:
    """Regressors ``[1, A, 4 + 2k]`` (xc, yc, w, h, keypoints) and logits ``[1, A, 1]``; one class."""

    name: ClassVar[str] = "blazeface"
    task: ClassVar[str] = DETECTION
    counts_background: ClassVar[bool] = False
    default_labels: tuple[str, ...] = ("face",)  # the preset's, per model

    @classmethod
    def matches(cls, signature: ModelSignature) -> bool:
        dims = per_anchor_output_dims(signature)
        if dims is None:
            return False
        a, b = dims
        return (_is_regressor_dim(a) and b == 1) or (_is_regressor_dim(b) and a == 1)

    @classmethod
    def default_input(cls, signature: ModelSignature) -> InputSpec:
        mean, std = NORMALIZE_PRESETS[_preset(signature).normalize]
        return InputSpec(
            layout=layout_of(signature), color="RGB", resize="letterbox", pad_value=0, mean=mean, std=std
        )

    def __init__(self, signature: ModelSignature, options: Mapping[str, Any]) -> None:
        if not self.matches(signature):
            raise ValueError("blazeface needs two outputs [1, A, 4 + 2k] and [1, A, 1] and a rank-4 image input")
        width, height = input_size(signature, layout_of(signature))
        preset = _preset(signature)
        self.default_labels = (preset.label,)
        self.keypoint_count = _keypoint_count(signature)
        self.keypoint_names = preset.keypoint_names if len(preset.keypoint_names) == self.keypoint_count else ()
        self._score_index = [o.shape[-1] for o in signature.outputs].index(1)
        self._regressor_index = 1 - self._score_index
        count = signature.outputs[self._regressor_index].shape[1]
        # Regressors are in input pixels, so the scales are the input size (128 for short range).
        box_scales = BoxScales(x=float(width), y=float(height), w=float(width), h=float(height))
        # The preset's anchor layout first, then the other known one (a face model at
        # another input size may be laid out like pose): the one giving the model's count.
        tried = []
        for strides in dict.fromkeys((preset.strides, FOUR_LAYERS, FIVE_LAYERS)):
            defaults = AnchorOptions(
                input_width=width,
                input_height=height,
                num_layers=len(strides),
                min_scale=0.1484375,
                max_scale=0.75,
                strides=strides,
                aspect_ratios=(1.0,),
                fixed_anchor_size=True,
            )
            anchor_options, scales = resolve_options(defaults, box_scales, options)
            anchors = generate_anchors(anchor_options)
            if count == len(anchors):
                break
            tried.append(str(len(anchors)))
        else:
            raise ValueError(
                f"the anchor options give {' or '.join(dict.fromkeys(tried))} anchors but the model has {count}; "
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
        gain, anchor_center = self._center_gain[keep], self._anchor_center[keep]
        center = kept[:, 0:2] * gain + anchor_center
        half = kept[:, 2:4] * self._half_size_gain[keep]
        boxes = np.hstack([center - half, center + half])
        keypoints = kept[:, 4 : 4 + 2 * self.keypoint_count].reshape(keep.size, self.keypoint_count, 2)
        keypoints = keypoints * gain[:, np.newaxis] + anchor_center[:, np.newaxis]
        found = nms(boxes, scores[keep], np.zeros(keep.size, dtype=np.int64), params, class_agnostic=True,
                    keypoints=keypoints)
        unclipped = geometry.points_to_image(found.boxes)
        return Detections(np.clip(unclipped, 0.0, 1.0), found.scores, found.class_ids,
                          geometry.points_to_image(found.keypoints), unclipped)
