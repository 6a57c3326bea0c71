"""Header checks, reduced JPEG decoding, letterbox geometry and tensor layout."""
from __future__ import annotations

import numpy as np
import pytest

from tests.support.images import encoded, png_declaring
from workers import imaging
from workers.errors import CorruptImage, EmptyBody, ImageTooLarge, NotAnImage
from workers.spec import InputSpec, NORMALIZE_PRESETS

LETTERBOX = InputSpec(layout="NCHW", resize="letterbox", pad_value=128)


def test_header_is_read_without_decoding_and_limits_apply():
    header = imaging.read_header(encoded(".jpg", 640, 480), max_pixels=10**6)
    assert header == imaging.ImageHeader("JPEG", 640, 480)
    with pytest.raises(ImageTooLarge):
        imaging.read_header(png_declaring(50_000, 50_000), max_pixels=50_000_000)
    with pytest.raises(EmptyBody):
        imaging.read_header(b"", max_pixels=10)
    with pytest.raises(NotAnImage):
        imaging.read_header(b"GIF89a-ish nonsense", max_pixels=10)


@pytest.mark.parametrize(
    ("size", "target", "factor"),
    [((1920, 1080), (300, 300), 2), ((640, 480), (300, 300), 1), ((4000, 3000), (300, 300), 8), ((1920, 1080), (416, 234), 4)],
)
def test_jpeg_reduction_keeps_at_least_the_pixels_the_model_takes(size, target, factor):
    header = imaging.ImageHeader("JPEG", *size)
    assert imaging.jpeg_reduction(header, *target) == factor
    assert imaging.jpeg_reduction(imaging.ImageHeader("PNG", *size), *target) == 1


def test_reduced_decode_halves_the_picture():
    data = encoded(".jpg", 1920, 1080)
    header = imaging.read_header(data, 10**8)
    assert imaging.decode(data, header, 2).shape == (540, 960, 3)
    with pytest.raises(CorruptImage):
        imaging.decode(data[:5000], header, 1)


def test_letterbox_geometry_maps_boxes_back_to_the_picture():
    header = imaging.ImageHeader("PNG", 800, 400)
    image = np.zeros((400, 800, 3), np.uint8)
    image[100:300, 200:600] = 255  # a white box at x 0.25..0.75, y 0.25..0.75
    pixels, geometry = imaging.to_input(image, header, LETTERBOX, 416, 416)
    assert pixels.shape == (416, 416, 3)
    assert (geometry.pad_x, geometry.pad_y) == (0, 104)
    assert pixels[0, 0, 0] == 128 and pixels[208, 208, 0] == 255
    ys, xs = np.nonzero(pixels[:, :, 0] == 255)
    in_input = np.array([[xs.min() / 416, ys.min() / 416, (xs.max() + 1) / 416, (ys.max() + 1) / 416]], np.float32)
    np.testing.assert_allclose(geometry.to_image(in_input), [[0.25, 0.25, 0.75, 0.75]], atol=0.005)


def test_reduced_decode_geometry_is_in_picture_coordinates():
    header = imaging.ImageHeader("JPEG", 1920, 1080)
    decoded = np.zeros((540, 960, 3), np.uint8)
    _, geometry = imaging.to_input(decoded, header, InputSpec(), 300, 300)
    np.testing.assert_allclose(geometry.to_image(np.array([[0.1, 0.2, 0.5, 1.2]], np.float32)), [[0.1, 0.2, 0.5, 1.0]], atol=1e-6)


def test_tensor_layout_dtype_and_range():
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[..., 0] = 255
    mean, std = NORMALIZE_PRESETS["minus_one_to_one"]
    nhwc = imaging.to_tensor(pixels, InputSpec(mean=mean, std=std), np.dtype(np.float32))
    assert nhwc.shape == (1, 2, 3, 3) and nhwc.dtype == np.float32
    assert nhwc[0, 0, 0, 0] == pytest.approx(1.0) and nhwc[0, 0, 0, 1] == pytest.approx(-1.0)
    nchw = imaging.to_tensor(pixels, InputSpec(layout="NCHW", mean=(0, 0, 0), std=(255, 255, 255)), np.dtype(np.float32))
    assert nchw.shape == (1, 3, 2, 3) and nchw[0, 0, 0, 0] == pytest.approx(1.0) and nchw[0, 1].max() == 0
    raw = imaging.to_tensor(pixels, InputSpec(), np.dtype(np.uint8))
    assert raw.dtype == np.uint8 and raw.flags.c_contiguous and raw[0, 0, 0, 0] == 255
