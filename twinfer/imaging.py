"""Image bytes -> model input tensor, and the geometry to map boxes back.

Why it looks like this: the header is read first (Pillow opens lazily, without
decoding) so a pixel bomb is refused before any memory is spent; JPEGs are decoded by
libjpeg-turbo through simplejpeg, straight into the model's channel order and at 1/2,
1/4 or 1/8 scale when the model input is that much smaller (libjpeg skips the work);
resize and colour swap run on uint8 before the one float conversion. Pictures are
turned upright by their EXIF orientation, so boxes refer to the picture as it is shown.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import cv2
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from twinfer import allocator
from twinfer.errors import CorruptImage, EmptyBody, ImageTooLarge, NotAnImage, UnsupportedMediaType
from twinfer.quantized_io import quantize_pixels
from twinfer.signature import Quantization
from twinfer.spec import InputSpec

SUPPORTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp", "WEBP": "image/webp"}
_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
EXIF_ORIENTATION = 0x0112
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
# Pillow warns about (and then refuses) huge images itself; our own limit is checked first.
Image.MAX_IMAGE_PIXELS = None

allocator.tune_heap()  # once, in every process that decodes (twinfer/allocator.py)


@dataclass(frozen=True)
class ImageHeader:
    """Format and size as the picture is shown (its EXIF orientation applied)."""

    format: str
    width: int
    height: int
    orientation: int = 1  # EXIF Orientation, 1-8; 1 = stored upright

    @property
    def stored_size(self) -> tuple[int, int]:
        """(width, height) of the pixel grid in the file, before turning it upright."""
        return (self.height, self.width) if self.orientation in _TRANSPOSED else (self.width, self.height)


class Decoded(NamedTuple):
    """Upright uint8 HWC pixels and their channel order ("RGB" or "BGR")."""

    pixels: np.ndarray
    color: str


class Placement(Protocol):
    """Where a model input came from in the picture: maps what a decoder finds there back."""

    def points_to_image(self, points: np.ndarray) -> np.ndarray:
        """Any ``x, y, x, y, ...`` array normalised to the model input -> normalised to the
        picture, unclipped (keypoints may lie outside it)."""
        ...

    @property
    def depth_scale(self) -> float:
        """Picture widths per input width: a landmark's depth scales as its x does."""
        ...


@dataclass(frozen=True)
class Geometry:
    """Where the picture sits inside the model input, to map boxes back to it.

    ``scale_x``/``scale_y`` are input pixels per decoded pixel, ``pad_x``/``pad_y`` the
    letterbox border in input pixels.
    """

    image_width: int
    image_height: int
    decoded_width: int
    decoded_height: int
    input_width: int
    input_height: int
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes ``[xmin, ymin, xmax, ymax]`` normalised to the model input ->
        normalised to the picture, clipped to it."""
        return np.clip(self.points_to_image(boxes), 0.0, 1.0)

    def points_to_image(self, points: np.ndarray) -> np.ndarray:
        out = np.empty_like(points, dtype=np.float32)
        out[..., 0::2] = (points[..., 0::2] * self.input_width - self.pad_x) / (self.scale_x * self.decoded_width)
        out[..., 1::2] = (points[..., 1::2] * self.input_height - self.pad_y) / (self.scale_y * self.decoded_height)
        return out

    @property
    def depth_scale(self) -> float:
        return self.input_width / (self.scale_x * self.decoded_width)

    def content_box(self) -> tuple[float, float, float, float]:
        """The picture's part of the input (the letterbox border left out), as fractions
        of the input: x0, y0, x1, y1."""
        x0, y0 = self.pad_x / self.input_width, self.pad_y / self.input_height
        return (x0, y0, x0 + self.scale_x * self.decoded_width / self.input_width,
                y0 + self.scale_y * self.decoded_height / self.input_height)


def read_header(data: bytes, max_pixels: int) -> ImageHeader:
    """Identify the format and size without decoding pixels."""
    if not data:
        raise EmptyBody("request body is empty: send the image bytes")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt, (width, height) = probe.format, probe.size
            orientation = _orientation(probe) if fmt == "JPEG" else 1
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise NotAnImage(f"body is not a readable image ({type(exc).__name__})") from None
    except Image.DecompressionBombError:  # pragma: no cover - MAX_IMAGE_PIXELS is off
        raise ImageTooLarge("image declares too many pixels") from None
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedMediaType(f"image format {fmt} is not supported; send JPEG, PNG, BMP or WebP")
    if width <= 0 or height <= 0:
        raise CorruptImage("image declares an empty size")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height}, over the limit of {max_pixels} pixels")
    if orientation in _TRANSPOSED:
        width, height = height, width
    return ImageHeader(fmt, width, height, orientation)


def _orientation(probe: Image.Image) -> int:
    """A JPEG's EXIF Orientation tag, 1 when absent, out of range or unreadable: a damaged
    EXIF block (Pillow's parser raises a variety of errors on one) must not lose the picture.
    JPEG only: Pillow reads a JPEG's EXIF when it opens the file, but a PNG's only by
    decoding every pixel first (``tests/twinfer/test_imaging.py``: a PNG declaring a huge size)."""
    try:
        value = probe.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - any EXIF parse failure means "no orientation"
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def jpeg_reduction(header: ImageHeader, target_width: int, target_height: int) -> int:
    """The largest libjpeg scale-down (1, 2, 4, 8) that still leaves at least the
    pixels the model input will take from the picture. The DCT fast paths are these
    powers of two: libjpeg-turbo's other scales (3/8, 5/8, ...) decode slower than 1/2."""
    if header.format != "JPEG":
        return 1
    # Shown size against a target in the shown orientation: for a sideways picture this is
    # the stored grid against the swapped target, the same comparison.
    for factor in (8, 4, 2):
        if header.width // factor >= target_width and header.height // factor >= target_height:
            return factor
    return 1


_TRUNCATED_JPEG = ("premature end of jpeg file", "premature end of data segment")  # libjpeg-turbo's words


def decode(data: bytes, header: ImageHeader, reduction: int = 1, color: str = "RGB") -> Decoded:
    """Decode upright, preferably in ``color`` order; truncated or corrupt data is a client error.

    JPEGs go to simplejpeg (libjpeg-turbo 3 with SIMD: 0.8 ms for a 640x480 picture where
    OpenCV's ``imdecode`` takes 1.9 ms, identical pixels); what it refuses goes to OpenCV,
    whose answer decides, as it does for every other format (decoded BGR)."""
    if header.format == "JPEG":
        width, height = header.stored_size
        try:
            pixels = simplejpeg.decode_jpeg(
                data, colorspace=color, min_width=math.ceil(width / reduction),
                min_height=math.ceil(height / reduction),
            )
            return Decoded(_upright(pixels, header.orientation), color)
        except ValueError as exc:
            # A truncated scan is never decoded: OpenCV would fill the rest with grey and
            # answer 200 (and a few hundred bytes declaring 7000x7000 would cost 150 MB).
            # Other refusals (warnings such as extraneous bytes before a marker) are left to
            # OpenCV, whose answer decides.
            if any(sign in str(exc).lower() for sign in _TRUNCATED_JPEG):
                raise CorruptImage(f"JPEG image is truncated ({exc})") from None
    flags = _REDUCED_FLAGS.get(reduction, cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if pixels is None:
        raise CorruptImage(f"{header.format} image is truncated or corrupt")
    return Decoded(_upright(pixels, header.orientation), "BGR")


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (Pillow's ``ImageOps.exif_transpose`` steps, in OpenCV)."""
    if orientation == 2:
        return cv2.flip(pixels, 1)
    if orientation == 3:
        return cv2.rotate(pixels, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(pixels, 0)
    if orientation == 5:
        return cv2.transpose(pixels)
    if orientation == 6:
        return cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(pixels), -1)
    if orientation == 8:
        return cv2.rotate(pixels, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return pixels


def content_size(header: ImageHeader, spec: InputSpec, input_width: int, input_height: int) -> tuple[int, int]:
    """Size the picture takes inside the model input (all of it when stretched)."""
    if spec.resize == "stretch":
        return input_width, input_height
    scale = min(input_width / header.width, input_height / header.height)
    return max(1, round(header.width * scale)), max(1, round(header.height * scale))


def to_input(
    decoded: Decoded, header: ImageHeader, spec: InputSpec, input_width: int, input_height: int
) -> tuple[np.ndarray, Geometry]:
    """Resize (stretch or letterbox) and swap colours if needed; returns uint8 HWC and the geometry."""
    height, width = decoded.pixels.shape[:2]
    content_w, content_h = content_size(header, spec, input_width, input_height)
    resized = cv2.resize(decoded.pixels, (content_w, content_h), interpolation=cv2.INTER_LINEAR)
    if decoded.color != spec.color:
        cv2.cvtColor(resized, cv2.COLOR_BGR2RGB, dst=resized)  # the same swap both ways
    pad_x = pad_y = 0
    if (content_w, content_h) != (input_width, input_height):
        pad_x, pad_y = (input_width - content_w) // 2, (input_height - content_h) // 2
        canvas = np.full((input_height, input_width, 3), spec.pad_value, dtype=np.uint8)
        canvas[pad_y : pad_y + content_h, pad_x : pad_x + content_w] = resized
        resized = canvas
    geometry = Geometry(
        image_width=header.width,
        image_height=header.height,
        decoded_width=width,
        decoded_height=height,
        input_width=input_width,
        input_height=input_height,
        scale_x=content_w / width,
        scale_y=content_h / height,
        pad_x=pad_x,
        pad_y=pad_y,
    )
    return resized, geometry


def _normalize_in_place(tensor: np.ndarray, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
    """``(tensor - mean) / std`` per channel of an HWC float32 picture, in place, in the
    cheapest form measured: numpy broadcasting a 3-vector runs a 3-element inner loop
    (1.2-1.7 ms for 300x300x3 here), a scalar takes 0.06 ms, OpenCV's per-channel scalar 0.4 ms."""
    if len(set(mean)) == 1 and len(set(std)) == 1:  # [-1, 1], [0, 1], none: the usual cases
        tensor -= np.float32(mean[0])
        tensor *= np.float32(1.0 / std[0])
    else:
        cv2.subtract(tensor, (*map(float, mean), 0.0), dst=tensor)
        cv2.multiply(tensor, (*(1.0 / float(s) for s in std), 1.0), dst=tensor)


def to_tensor(
    pixels: np.ndarray, spec: InputSpec, dtype: np.dtype, quantization: Quantization | None = None
) -> np.ndarray:
    """uint8 HWC -> batched tensor in the model's layout, dtype and value range; a quantised
    input (``quantization``) gets the normalised picture as the model's integers."""
    if quantization is not None:
        tensor = quantize_pixels(pixels, spec.mean, spec.std, dtype, quantization)
    elif dtype == np.uint8:  # raw pixels: the input has no quantization to say otherwise
        tensor = pixels
    else:
        tensor = pixels.astype(np.float32)
        _normalize_in_place(tensor, spec.mean, spec.std)
        if dtype != np.float32:
            tensor = tensor.astype(dtype)
    if spec.layout == "NCHW":
        tensor = tensor.transpose(2, 0, 1)
    return np.ascontiguousarray(tensor[np.newaxis])
