"""Header checks, reduced JPEG decoding, EXIF orientation, letterbox geometry and tensor layout."""
from __future__ import annotations

import io
import time

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.support.images import encoded, png_declaring
from tests.support.paths import DEFAULT_MODEL, IMAGES
from twinfer import imaging
from twinfer.engines import EngineOptions
from twinfer.errors import CorruptImage, EmptyBody, ImageTooLarge, NotAnImage
from twinfer.loader import load_model
from twinfer.spec import NORMALIZE_PRESETS, InputSpec

LETTERBOX = InputSpec(layout="NCHW", resize="letterbox", pad_value=128)


@pytest.fixture(scope="module")
def default_model():
    return load_model(DEFAULT_MODEL, "default", "1", EngineOptions())


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
    assert imaging.decode(data, header, 2).pixels.shape == (540, 960, 3)
    with pytest.raises(CorruptImage):
        imaging.decode(data[:5000], header, 1)


def test_letterbox_geometry_maps_boxes_back_to_the_picture():
    header = imaging.ImageHeader("PNG", 800, 400)
    image = np.zeros((400, 800, 3), np.uint8)
    image[100:300, 200:600] = 255  # a white box at x 0.25..0.75, y 0.25..0.75
    pixels, geometry = imaging.to_input(imaging.Decoded(image, "BGR"), header, LETTERBOX, 416, 416)
    assert pixels.shape == (416, 416, 3)
    assert (geometry.pad_x, geometry.pad_y) == (0, 104)
    assert pixels[0, 0, 0] == 128 and pixels[208, 208, 0] == 255
    ys, xs = np.nonzero(pixels[:, :, 0] == 255)
    in_input = np.array([[xs.min() / 416, ys.min() / 416, (xs.max() + 1) / 416, (ys.max() + 1) / 416]], np.float32)
    np.testing.assert_allclose(geometry.to_image(in_input), [[0.25, 0.25, 0.75, 0.75]], atol=0.005)


def test_reduced_decode_geometry_is_in_picture_coordinates():
    header = imaging.ImageHeader("JPEG", 1920, 1080)
    decoded = np.zeros((540, 960, 3), np.uint8)
    _, geometry = imaging.to_input(imaging.Decoded(decoded, "RGB"), header, InputSpec(), 300, 300)
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


@pytest.mark.parametrize("reduction", [1, 2, 4, 8])
def test_jpeg_decode_matches_opencv_pixel_for_pixel(reduction):
    """simplejpeg replaced cv2.imdecode for JPEGs: same libjpeg-turbo output, in the order asked."""
    data = encoded(".jpg", 1920, 1080, seed=3)
    header = imaging.read_header(data, 10**8)
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
    reference_bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags[reduction])
    rgb, bgr = imaging.decode(data, header, reduction, "RGB"), imaging.decode(data, header, reduction, "BGR")
    assert (rgb.color, bgr.color) == ("RGB", "BGR")
    np.testing.assert_array_equal(bgr.pixels, reference_bgr)
    np.testing.assert_array_equal(rgb.pixels, reference_bgr[:, :, ::-1])


def test_other_formats_decode_with_opencv_and_are_swapped_after_resizing():
    data = encoded(".png", 64, 48, seed=4)
    header = imaging.read_header(data, 10**6)
    decoded = imaging.decode(data, header, 1, "RGB")
    assert decoded.color == "BGR"
    pixels, _ = imaging.to_input(decoded, header, InputSpec(color="RGB"), 64, 48)
    np.testing.assert_array_equal(pixels, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1])


def _with_orientation(picture: np.ndarray, orientation: int) -> bytes:
    image = Image.fromarray(picture)
    exif = image.getexif()
    exif[imaging.EXIF_ORIENTATION] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow(orientation):
    """Phone pictures are stored sideways with an EXIF Orientation tag: boxes must refer to
    the picture as shown, so the header reports the shown size and decoding turns it upright."""
    picture = np.zeros((96, 160, 3), np.uint8)
    picture[8:40, 16:64] = (255, 0, 0)  # a red block near the top-left corner: no symmetry
    data = _with_orientation(picture, orientation)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    header = imaging.read_header(data, 10**6)
    assert (header.width, header.height) == (shown.shape[1], shown.shape[0])
    assert header.orientation == orientation
    for reduction in (1, 2):
        decoded = imaging.decode(data, header, reduction, "RGB")
        expected = shown if reduction == 1 else cv2.resize(shown, (shown.shape[1] // 2, shown.shape[0] // 2), interpolation=cv2.INTER_AREA)
        assert decoded.pixels.shape == expected.shape
        assert np.abs(decoded.pixels.astype(int) - expected).mean() < 4  # same picture, upright


def test_jpeg_reduction_uses_the_stored_grid_of_a_sideways_picture():
    # Stored 1920x1080 but shown 1080x1920 (orientation 6); a 416x600 content needs 1/2
    # of the stored grid, not 1/4 (1/4 would leave 480x270 where 600x416 is needed).
    header = imaging.ImageHeader("JPEG", 1080, 1920, orientation=6)
    assert header.stored_size == (1920, 1080)
    assert imaging.jpeg_reduction(header, 416, 600) == 2


def test_header_of_a_png_declaring_a_huge_size_is_read_without_decoding():
    """Pillow decodes a PNG's pixels to find its EXIF: orientation is read for JPEGs only,
    or this header (85 G pixels declared, no data) held a worker for 21 s before the size
    check could refuse it (the fuzz tests found it through gunicorn's worker timeout)."""
    started = time.perf_counter()
    header = imaging.read_header(png_declaring(51, 1_669_173_224), max_pixels=10**11)
    assert (header.width, header.height, header.orientation) == (51, 1_669_173_224, 1)
    assert time.perf_counter() - started < 1.0


def test_a_damaged_exif_block_does_not_lose_the_picture():
    data = _with_orientation(np.full((32, 48, 3), 90, np.uint8), 6)
    start = data.index(b"Exif\x00\x00") + 6
    damaged = data[:start] + b"\xff" * 24 + data[start + 24 :]
    header = imaging.read_header(damaged, 10**6)
    assert header.orientation in (1, 6)
    assert imaging.decode(damaged, header, 1, "RGB").pixels.shape[:2] == (header.height, header.width)


def test_a_sideways_photo_gives_the_upright_detection(default_model):
    """End to end through the real model: the astronaut stored rotated with orientation 6
    is found where the upright picture has her, in shown-picture pixels."""
    upright = cv2.imread(str(IMAGES / "astronaut.png"))[:, :, ::-1]
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # rotated 90 degrees counter-clockwise
    sideways = _with_orientation(stored, 6)  # 6 = turn 90 degrees clockwise to show
    plain = _with_orientation(np.ascontiguousarray(upright), 1)
    expected = default_model.detect(plain, 10**8).detections
    found = default_model.detect(sideways, 10**8)
    assert (found.header.width, found.header.height) == (upright.shape[1], upright.shape[0])
    assert default_model.label(int(found.detections.class_ids[0])) == default_model.label(int(expected.class_ids[0]))
    np.testing.assert_allclose(found.detections.boxes[0], expected.boxes[0], atol=0.03)
