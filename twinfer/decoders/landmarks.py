"""MediaPipe-style landmark models: one tensor of K points x (x, y, z[, visibility,
presence]) in input pixels, and a presence score for the instance.

Matched when a model has several outputs, one of them holding exactly a known
topology's values (``twinfer.decoders.topologies``: pose 39x5, hand 21x3, face mesh
468x3) and one a single value. The first single-value output is the instance presence;
a second one is the topology's instance label (a hand's handedness, as MediaPipe Tasks
reads it: for a picture as the camera saw it, not mirrored; MediaPipe's older solution
graphs assumed a mirrored selfie picture and name the other hand). Other outputs (world landmarks, heatmaps, the
pose model's segmentation) are left to KServe's raw tensors.

On a whole picture the landmarks come back for one instance; fed crops by a detector
(``twinfer.json`` ``chain``), one instance per crop, mapped back through the crop.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from twinfer.decoders.base import DecodeParams, input_size, layout_of, sigmoid
from twinfer.decoders.topologies import TOPOLOGIES, Topology, topology_for_size
from twinfer.imaging import Placement
from twinfer.signature import ModelSignature
from twinfer.spec import NORMALIZE_PRESETS, InputSpec
from twinfer.tasks import KEYPOINTS, Landmarks

HANDEDNESS = ("left", "right")  # by the output's value >= 0.5, as MediaPipe Tasks' hand landmarker


def _size(shape: tuple[int | None, ...]) -> int | None:
    if any(d is None for d in shape[1:]):
        return None
    return math.prod(shape[1:])  # type: ignore[arg-type]


def _layout(signature: ModelSignature, topology: Topology | None) -> tuple[Topology, int, list[int]] | None:
    """(topology, landmark output index, single-value output indices), or None."""
    if len(signature.outputs) < 2 or not any(i.rank == 4 for i in signature.inputs):
        return None
    sizes = [_size(o.shape) for o in signature.outputs]
    scalars = [i for i, size in enumerate(sizes) if size == 1]
    if not scalars:
        return None
    for index, size in enumerate(sizes):
        if topology is not None:
            found = topology if size == topology.tensor_size else None
        else:
            found = topology_for_size(size) if size else None
        if found is not None:
            return found, index, scalars
    return None


class LandmarksDecoder:
    name: ClassVar[str] = "landmarks"
    task: ClassVar[str] = KEYPOINTS
    counts_background: ClassVar[bool] = False
    default_labels: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def matches(cls, signature: ModelSignature) -> bool:
        return _layout(signature, None) is not None

    @classmethod
    def default_input(cls, signature: ModelSignature) -> InputSpec:
        mean, std = NORMALIZE_PRESETS["zero_to_one"]  # every MediaPipe landmark model
        return InputSpec(layout=layout_of(signature), color="RGB", resize="letterbox", mean=mean, std=std)

    def __init__(self, signature: ModelSignature, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"topology"}
        if unknown:
            raise ValueError(f"unknown decoder_options {sorted(unknown)} for landmarks; known: topology")
        wanted = options.get("topology")
        if wanted is not None and wanted not in TOPOLOGIES:
            raise ValueError(f"decoder_options.topology must be one of {', '.join(TOPOLOGIES)}, got {wanted!r}")
        layout = _layout(signature, TOPOLOGIES[wanted] if wanted else None)
        if layout is None:
            raise ValueError("landmarks needs an output of a known topology's size "
                             f"({', '.join(f'{t.name} {t.tensor_size}' for t in TOPOLOGIES.values())}) "
                             "and a single-value presence output")
        self.topology, self._landmark_index, scalars = layout
        self._presence_index = scalars[0]
        self._label_index = scalars[1] if self.topology.instance_label and len(scalars) > 1 else None
        width, height = input_size(signature, layout_of(signature))
        self._input_size = np.array([width, height], dtype=np.float32)

    def extra_inputs(self, geometry: Any) -> dict[str, np.ndarray]:
        return {}

    def decode(self, outputs: Sequence[np.ndarray], placement: Placement, params: DecodeParams) -> list[Landmarks]:
        """The instance, when its presence reaches the threshold."""
        topology = self.topology
        presence = float(outputs[self._presence_index].reshape(-1)[0])
        score = float(sigmoid(presence)) if topology.presence_is_logit else presence
        if score < params.score_threshold:
            return []
        values = outputs[self._landmark_index].reshape(topology.points, topology.values_per_point)
        values = values[: len(topology.names)].astype(np.float32)
        points = placement.points_to_image(values[:, :2] / self._input_size)
        depth = values[:, 2] / (self._input_size[0] * topology.depth_divisor) * placement.depth_scale
        extra = {}
        if topology.values_per_point >= 5:
            extra = {"visibility": sigmoid(values[:, 3]), "presence": sigmoid(values[:, 4])}
        label = label_score = None
        if self._label_index is not None:
            value = float(outputs[self._label_index].reshape(-1)[0])
            label, label_score = HANDEDNESS[value >= 0.5], max(value, 1.0 - value)
        return [Landmarks(score, points, depth, label=label, label_score=label_score, **extra)]
