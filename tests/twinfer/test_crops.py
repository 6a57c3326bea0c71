"""Crops around detections (MediaPipe's ROI arithmetic) and the way back to the picture."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from twinfer.chain_spec import CropSpec, parse_chain
from twinfer.crops import CropPlacement, cut, roi_for
from twinfer.spec import SpecError

W, H = 400, 200
BOX = np.array([0.25, 0.25, 0.5, 0.75], dtype=np.float32)  # 100 x 100 px centred at (150, 100)


def test_a_box_crop_is_centred_squared_shifted_and_scaled():
    plain = roi_for(BOX, None, CropSpec(), W, H)
    assert (plain.x_center, plain.y_center, plain.width, plain.height, plain.rotation) == (150, 100, 100, 100, 0)
    wide = np.array([0.25, 0.25, 0.75, 0.5], dtype=np.float32)  # 200 x 50 px
    squared = roi_for(wide, None, CropSpec(square=True, scale=1.5), W, H)
    assert (squared.width, squared.height) == (300, 300)
    shifted = roi_for(BOX, None, CropSpec(shift=(0.0, -0.5)), W, H)
    assert (shifted.x_center, shifted.y_center) == (150, 50)


@pytest.mark.parametrize("towards, degrees", [((0, -1), 0), ((1, 0), 90), ((0, 1), 180), ((-1, 0), -90)])
def test_rotation_turns_the_keypoint_vector_upright(towards, degrees):
    a = np.array([150 / W, 100 / H])
    keypoints = np.array([a, a + np.array(towards) * (10 / W, 10 / H)], dtype=np.float32)
    roi = roi_for(BOX, keypoints, CropSpec(keypoints=(0, 1), rotation=90), W, H)
    turned = (math.cos(roi.rotation), math.sin(roi.rotation))
    assert turned == pytest.approx((math.cos(math.radians(degrees)), math.sin(math.radians(degrees))), abs=1e-6)
    if degrees != 0:  # a shift up in the crop's own frame follows the rotation
        moved = roi_for(BOX, keypoints, CropSpec(keypoints=(0, 1), rotation=90, shift=(0, -0.5)), W, H)
        step = np.array([moved.x_center - roi.x_center, moved.y_center - roi.y_center]) / 50
        assert step == pytest.approx(np.array(towards), abs=1e-4)


def test_alignment_keypoints_give_a_square_around_the_first_point():
    keypoints = np.array([[0.5, 0.5], [0.5, 0.25]], dtype=np.float32)  # 50 px straight up
    roi = roi_for(BOX, keypoints, CropSpec(origin="keypoints", keypoints=(0, 1), rotation=90), W, H)
    assert (roi.x_center, roi.y_center, roi.width, roi.height) == (200, 100, 100, 100)
    assert roi.rotation == pytest.approx(0.0)


def test_a_crop_and_its_placement_agree_on_where_a_marker_is():
    picture = np.zeros((H, W, 3), np.uint8)
    cv2.circle(picture, (170, 80), 3, (255, 255, 255), -1)
    keypoints = np.array([[150 / W, 100 / H], [160 / W, 90 / H]], dtype=np.float32)  # 45 degrees up-right
    roi = roi_for(BOX, keypoints, CropSpec(keypoints=(0, 1), rotation=90, scale=1.2), W, H)
    crop = cut(picture, roi, W, 64, 64)
    ys, xs = np.nonzero(crop[..., 0] > 128)
    found = np.array([[xs.mean() / 64, ys.mean() / 64]], dtype=np.float32)
    back = CropPlacement(roi, W, H).points_to_image(found)[0] * (W, H)
    assert back == pytest.approx((170, 80), abs=1.5)
    half = cut(cv2.resize(picture, (W // 2, H // 2)), roi, W, 64, 64)  # a picture decoded at half size
    assert np.abs(half.astype(int) - crop.astype(int)).mean() < 8


@pytest.mark.parametrize("raw, message", [
    ({}, "chain.detector must name"),
    ({"detector": "d", "crop": {"from": "middle"}}, "chain.crop.from must be"),
    ({"detector": "d", "crop": {"keypoints": [1, 1]}}, "two different keypoint"),
    ({"detector": "d", "crop": {"scale": 0}}, "crop.scale must be a number"),
    ({"detector": "d", "labels": []}, "chain.labels must be"),
    ({"detector": "d", "why": 1}, "unknown chain keys: why"),
])
def test_a_malformed_chain_is_refused_naming_the_key(raw, message):
    with pytest.raises(SpecError, match=message):
        parse_chain(raw)
