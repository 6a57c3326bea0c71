"""Named landmark sets (names and skeleton edges) of the MediaPipe landmark models.

Why here: a landmark model's file says how many numbers it outputs, not what they mean.
These are MediaPipe's own definitions (``pose_landmark``, ``hand_landmark``,
``face_landmark`` and their ``*_CONNECTIONS``); a model is matched to one by the size of
its landmark tensor, or named in ``twinfer.json`` (``decoder_options.topology``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    name: str
    points: int  # landmarks in the tensor
    values_per_point: int  # x, y, z[, visibility, presence]
    names: tuple[str, ...]  # the landmarks answered (the first len(names) of the tensor)
    edges: tuple[tuple[int, int], ...]
    presence_is_logit: bool  # the instance presence output needs a sigmoid
    instance_label: str | None = None  # what a second scalar output means (a hand's handedness)
    depth_divisor: float = 1.0  # MediaPipe's normalize_z: the hand graphs divide z by 0.4

    @property
    def tensor_size(self) -> int:
        return self.points * self.values_per_point


_SIDES = ("left", "right")
POSE_NAMES = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right",
    *(f"{side}_{part}" for part in ("shoulder", "elbow", "wrist", "pinky", "index", "thumb", "hip", "knee", "ankle",
                                    "heel", "foot_index") for side in _SIDES),
)
POSE_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 7), (0, 4), (4, 5), (5, 6), (6, 8), (9, 10), (11, 12), (11, 13), (13, 15), (15, 17),
    (15, 19), (15, 21), (17, 19), (12, 14), (14, 16), (16, 18), (16, 20), (16, 22), (18, 20), (11, 23), (12, 24),
    (23, 24), (23, 25), (24, 26), (25, 27), (26, 28), (27, 29), (28, 30), (29, 31), (30, 32), (27, 31), (28, 32),
)
_FINGERS = ("index_finger", "middle_finger", "ring_finger", "pinky")
HAND_NAMES = (
    "wrist", "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
    *(f"{finger}_{joint}" for finger in _FINGERS for joint in ("mcp", "pip", "dip", "tip")),
)
HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (5, 9), (9, 10), (10, 11), (11, 12), (9, 13),
    (13, 14), (14, 15), (15, 16), (13, 17), (0, 17), (17, 18), (18, 19), (19, 20),
)

TOPOLOGIES: dict[str, Topology] = {
    # BlazePose: 33 body landmarks and 6 auxiliary ones (MediaPipe's ROI alignment points),
    # which are not answered.
    "pose": Topology("pose", 39, 5, POSE_NAMES, POSE_EDGES, presence_is_logit=False),
    "hand": Topology("hand", 21, 3, HAND_NAMES, HAND_EDGES, presence_is_logit=False, instance_label="handedness",
                     depth_divisor=0.4),
    # The 468-point face mesh has no names; its tesselation (2,556 edges) is left to clients.
    "face_mesh": Topology("face_mesh", 468, 3, tuple(f"p{i}" for i in range(468)), (), presence_is_logit=True),
}


def topology_for_size(size: int) -> Topology | None:
    """The known topology whose landmark tensor has ``size`` values."""
    return next((t for t in TOPOLOGIES.values() if t.tensor_size == size), None)
