"""YOLOv3 with in-graph NMS (ONNX model zoo yolov3-10/tiny-yolov3-11 style).

The model takes the picture's size as a second input and undoes its own letterbox, so
its boxes come back in pixels of the decoded picture: they are normalised by that size
rather than passed through ``Geometry.to_image``. NMS already ran in the graph; what
is left is gathering the selected (batch, class, box) triples.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from twinfer.decoders.base import DecodeParams, Detections
from twinfer.imaging import Geometry
from twinfer.signature import ModelSignature, TensorInfo
from twinfer.spec import NORMALIZE_PRESETS, InputSpec
from twinfer.tasks import DETECTION

_YXYX_TO_XYXY = [1, 0, 3, 2]


def _is_shape_input(tensor: TensorInfo) -> bool:
    """Two elements (h, w), allowing a dynamic batch dim."""
    return tensor.rank >= 1 and tensor.shape[-1] == 2 and all(d in (1, None) for d in tensor.shape[:-1])


def _is_integer(tensor: TensorInfo) -> bool:
    return np.issubdtype(tensor.dtype, np.integer)


class YoloV3NmsDecoder:
    name: ClassVar[str] = "yolov3_nms"
    task: ClassVar[str] = DETECTION
    counts_background: ClassVar[bool] = False
    default_labels: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def matches(cls, signature: ModelSignature) -> bool:
        inputs, outputs = signature.inputs, signature.outputs
        if len(inputs) != 2 or len(outputs) != 3:
            return False
        shape_inputs = [t for t in inputs if t.rank != 4 and _is_shape_input(t)]
        integer_outputs = [o for o in outputs if _is_integer(o)]
        float_outputs = [o for o in outputs if not _is_integer(o)]
        return (
            sum(t.rank == 4 for t in inputs) == 1
            and len(shape_inputs) == 1
            and len(integer_outputs) == 1
            and all(o.rank == 3 for o in float_outputs)
        )

    @classmethod
    def default_input(cls, signature: ModelSignature) -> InputSpec:
        mean, std = NORMALIZE_PRESETS["zero_to_one"]
        return InputSpec(layout="NCHW", color="RGB", resize="letterbox", pad_value=128, mean=mean, std=std)

    def __init__(self, signature: ModelSignature, options: Mapping[str, Any]) -> None:
        if not self.matches(signature):
            raise ValueError("yolov3_nms needs inputs image + image_shape and outputs boxes, scores, int indices")
        shape_input = next(t for t in signature.inputs if t.rank != 4)
        self._shape_name = shape_input.name
        self._shape_dtype = shape_input.dtype
        self._shape_shape = tuple(d or 1 for d in shape_input.shape)
        outputs = signature.outputs
        self._indices = next(i for i, o in enumerate(outputs) if _is_integer(o))
        floats = [i for i, o in enumerate(outputs) if not _is_integer(o)]
        # boxes [1, N, 4] vs scores [1, C, N]: the last dim tells them apart unless both
        # end in 4; then the name decides (boxes sort first in the model zoo's naming).
        ends_in_4 = [i for i in floats if outputs[i].shape[2] == 4]
        self._boxes = ends_in_4[0] if len(ends_in_4) == 1 else min(floats, key=lambda i: outputs[i].name)
        self._scores = next(i for i in floats if i != self._boxes)

    def extra_inputs(self, geometry: Geometry) -> dict[str, np.ndarray]:
        """The decoded picture's (height, width), which the model's boxes are scaled to."""
        size = np.array([geometry.decoded_height, geometry.decoded_width], dtype=self._shape_dtype)
        return {self._shape_name: size.reshape(self._shape_shape)}

    def decode(self, outputs: Sequence[np.ndarray], geometry: Geometry, params: DecodeParams) -> Detections:
        # Accepts indices as [1, M, 3] and [M, 3] (exporters differ).
        selected = outputs[self._indices].reshape(-1, 3)
        batch, classes, box = selected[:, 0], selected[:, 1], selected[:, 2]
        scores = outputs[self._scores][batch, classes, box]
        kept = np.flatnonzero(scores >= params.score_threshold)
        kept = kept[np.argsort(-scores[kept], kind="stable")][: params.max_detections]
        boxes = outputs[self._boxes][batch[kept], box[kept]][:, _YXYX_TO_XYXY].astype(np.float32)
        boxes /= np.array(
            [geometry.decoded_width, geometry.decoded_height, geometry.decoded_width, geometry.decoded_height],
            dtype=np.float32,
        )
        return Detections(
            np.clip(boxes, 0.0, 1.0, out=boxes), scores[kept].astype(np.float32), classes[kept].astype(np.int64)
        )
