"""SSD exports that end in ``TFLite_Detection_PostProcess`` (TF Object Detection API).

The op has already decoded the anchors and run NMS in the graph, so this decoder only
keeps the valid rows, thresholds them and maps the boxes back to the picture. TF1 and
TF2 exports list the four outputs in different orders, so roles come from shapes, and
classes vs scores (both ``[1, N]``) from the standard names or, failing that, values.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from twinfer.decoders.base import DecodeParams, Detections, layout_of
from twinfer.imaging import Geometry
from twinfer.signature import ModelSignature, TensorInfo
from twinfer.spec import NORMALIZE_PRESETS, InputSpec
from twinfer.tasks import DETECTION

_OP_NAME = "TFLite_Detection_PostProcess"
_YXYX_TO_XYXY = [1, 0, 3, 2]


def _roles(outputs: Sequence[TensorInfo]) -> tuple[int, tuple[int, int], int] | None:
    """(boxes, (the two [1, N] outputs in signature order), count) positions, or None."""
    if len(outputs) != 4:
        return None
    boxes = [i for i, o in enumerate(outputs) if o.rank == 3 and o.shape[2] == 4]
    counts = [i for i, o in enumerate(outputs) if o.rank <= 1 and o.shape in ((), (1,))]
    if len(boxes) != 1 or len(counts) != 1:
        return None
    n = outputs[boxes[0]].shape[1]
    pair = [
        i
        for i, o in enumerate(outputs)
        if o.rank == 2 and o.shape[0] in (1, None) and (n is None or o.shape[1] in (n, None))
    ]
    if len(pair) != 2:
        return None
    return boxes[0], (pair[0], pair[1]), counts[0]


def _integral(values: np.ndarray) -> bool:
    return bool(np.all(values == np.rint(values)))


class TfliteSsdPostprocessDecoder:
    name: ClassVar[str] = "tflite_ssd_postprocess"
    task: ClassVar[str] = DETECTION
    # The op's class ids start at the first real class; a leading "???" label is skipped.
    counts_background: ClassVar[bool] = False
    default_labels: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def matches(cls, signature: ModelSignature) -> bool:
        return _roles(signature.outputs) is not None

    @classmethod
    def default_input(cls, signature: ModelSignature) -> InputSpec:
        # Float variants of these exports are trained on [-1, 1]; uint8 ones take raw pixels.
        mean, std = NORMALIZE_PRESETS["minus_one_to_one"]
        return InputSpec(layout=layout_of(signature), color="RGB", resize="stretch", mean=mean, std=std)

    def __init__(self, signature: ModelSignature, options: Mapping[str, Any]) -> None:
        roles = _roles(signature.outputs)
        if roles is None:
            raise ValueError("tflite_ssd_postprocess needs boxes [1,N,4], classes [1,N], scores [1,N] and count [1]")
        self._boxes, self._pair, self._count = roles
        names = {signature.outputs[i].name: i for i in self._pair}
        classes, scores = names.get(f"{_OP_NAME}:1"), names.get(f"{_OP_NAME}:2")
        # None: decide from the values on each call (non-standard names, e.g. TF2's
        # StatefulPartitionedCall:N, whose suffixes do not follow the op's output order).
        self._named: tuple[int, int] | None = (classes, scores) if classes is not None and scores is not None else None
        # When values cannot tell (all integral, all <= 1): TF1 order puts boxes first and
        # classes before scores; TF2 order is scores, boxes, count, classes.
        first, second = self._pair
        self._positional = (first, second) if self._boxes == 0 else (second, first)

    def extra_inputs(self, geometry: Geometry) -> dict[str, np.ndarray]:
        return {}

    def _classes_scores(self, outputs: Sequence[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
        if self._named is not None:
            classes_at, scores_at = self._named
            return outputs[classes_at].reshape(-1)[:n], outputs[scores_at].reshape(-1)[:n]
        a, b = (outputs[i].reshape(-1)[:n] for i in self._pair)
        a_integral, b_integral = _integral(a), _integral(b)
        if a_integral != b_integral:
            return (a, b) if a_integral else (b, a)
        a_big, b_big = bool(a.max() > 1.0), bool(b.max() > 1.0)
        if a_integral and a_big != b_big:
            return (a, b) if a_big else (b, a)
        classes_at, scores_at = self._positional
        return outputs[classes_at].reshape(-1)[:n], outputs[scores_at].reshape(-1)[:n]

    def decode(self, outputs: Sequence[np.ndarray], geometry: Geometry, params: DecodeParams) -> Detections:
        boxes = outputs[self._boxes].reshape(-1, 4)
        n = min(int(outputs[self._count].reshape(-1)[0]), len(boxes))
        if n <= 0:
            return Detections.empty()
        classes, scores = self._classes_scores(outputs, n)
        kept = np.flatnonzero(scores >= params.score_threshold)
        kept = kept[np.argsort(-scores[kept], kind="stable")][: params.max_detections]
        return Detections(
            geometry.to_image(boxes[kept][:, _YXYX_TO_XYXY]),
            scores[kept].astype(np.float32),
            classes[kept].astype(np.int64),
        )
