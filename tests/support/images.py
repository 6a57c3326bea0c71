"""Crafted inputs for the bad-input tests."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b"")


def jpeg_with_declared_size(jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose SOF marker is patched to claim another size."""
    data = bytearray(jpeg)
    i = 2
    while i < len(data):
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise ValueError("no SOF marker")


def encoded(ext: str, width: int, height: int, seed: int = 0) -> bytes:
    """A synthetic picture of the given size in the given format (``.jpg``, ``.png``, ...)."""
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 255, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8), (width, height))
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()
