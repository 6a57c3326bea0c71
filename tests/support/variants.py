"""Bundles of the demo SSD as an operator's ``bundle`` writes them: fp32, its int8 variant
(ONNX Runtime static quantisation calibrated on the repository's photos, with a
verification set), and a broken int8 variant (calibrated on a mid-grey picture, written past
the operator's gate on purpose: devices must refuse it on their own)."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np

from service.commands.bundle import directory_entries, write_zip
from service.quantize import QuantizeOptions
from service.variant_bundle import calibration_pictures, make_variant
from service.verification import Gate
from tests.support.bundles import Bundle
from tests.support.paths import DEFAULT_MODEL, IMAGES, MODELS

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "grace_hopper.jpg", "rocket.jpg")


def photos() -> list[bytes]:
    return calibration_pictures(IMAGES, len(PHOTOS))


def grey_picture() -> bytes:
    """Mid-grey is an all-zero input tensor for the demo SSD ([-1, 1]): calibrated on it alone,
    the activation ranges collapse and the int8 model finds nothing on real photos (measured:
    F1 0.0; a black or a white picture still gave 1.0, dimmed photos 0.86)."""
    ok, encoded = cv2.imencode(".png", np.full((300, 300, 3), 128, np.uint8))
    assert ok
    return encoded.tobytes()


def bundle_directory(directory: Path, out: Path) -> Bundle:
    """The directory's files zipped as ``bundle`` writes them (written to ``out`` too)."""
    write_zip(out, directory_entries(directory))
    return Bundle(out.read_bytes())


def reference_dir(work: Path, model: Path = DEFAULT_MODEL / "model.onnx") -> Path:
    """The demo model's directory, with ``model`` as its model file (a fine-tune, say)."""
    directory = work / "reference"
    directory.mkdir(parents=True)
    for name in ("labels.txt", "twinfer.json"):
        shutil.copyfile(DEFAULT_MODEL / name, directory / name)
    shutil.copyfile(model, directory / "model.onnx")
    return directory


def fp32_bundle(work: Path, model: Path = DEFAULT_MODEL / "model.onnx") -> Bundle:
    return bundle_directory(reference_dir(work, model), work / "fp32.zip")


def int8_bundle(work: Path, model: Path = DEFAULT_MODEL / "model.onnx", broken: bool = False) -> Bundle:
    """The int8 variant with a verification set from the photos; ``broken``: calibrated on a
    mid-grey picture and written below the gate."""
    variant = work / "int8"
    variant.mkdir(parents=True)
    make_variant(reference_dir(work, model), None, variant, photos(), precision="int8", quantize=QuantizeOptions(),
                 gate=Gate(), verification_pictures=4, enforce_gate=not broken,
                 calibration=[grey_picture()] if broken else None)
    return bundle_directory(variant, work / "int8.zip")


def tflite_bundles(work: Path) -> tuple[Bundle, Bundle]:
    """The SSD as LiteRT models: fp16, and the full-integer one (a TFLite converter's, see
    tests/fixtures/models/PROVENANCE.md) with a verification set built from fp16, as
    ``bundle MODEL --reference FP16 --calibration`` writes it."""
    reference = work / "fp16"
    reference.mkdir(parents=True)
    shutil.copyfile(MODELS / "ssd_mobilenetv2_oidv4_fp16.tflite", reference / "ssd_mobilenetv2_oidv4_fp16.tflite")
    shutil.copyfile(MODELS / "oidv4_labelmap.txt", reference / "labelmap.txt")
    variant = work / "int8-tflite"
    variant.mkdir()
    make_variant(reference, MODELS / "ssd_mobilenetv2_oidv4_int8.tflite", variant, photos(), precision="int8",
                 quantize=None, gate=Gate(), verification_pictures=4)
    return bundle_directory(reference, work / "fp16.zip"), bundle_directory(variant, work / "int8-tflite.zip")
