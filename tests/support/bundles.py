"""Model bundles for lifecycle tests: real models zipped the way operators ship them."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass

from tests.support.paths import MODELS


@dataclass(frozen=True)
class Bundle:
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def md5_base64(self) -> str:
        return base64.b64encode(hashlib.md5(self.data).digest()).decode()


def make_bundle(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Bundle:
    """``compression=zipfile.ZIP_STORED`` as ``python -m service bundle`` stores model files: deltas stay small."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, compress_type=compression)
    return Bundle(buffer.getvalue())


def face_bundle(fmt: str = "tflite", metadata: dict | None = None) -> Bundle:
    """BlazeFace (small, real): a different model family from the bundled SSD."""
    files = {f"blazeface.{fmt}": (MODELS / f"blazeface_short_range.{fmt}").read_bytes(), "labels.txt": b"face\n"}
    if metadata is not None:
        files["twinfer.json"] = json.dumps(metadata).encode()
    return make_bundle(files)


def ssd_tflite_bundle() -> Bundle:
    """The 10 MB SSD MobileNetV2 .tflite with its label map (the reference design's shape)."""
    return make_bundle(
        {
            "ssd_mobilenetv2_oidv4_fp16.tflite": (MODELS / "ssd_mobilenetv2_oidv4_fp16.tflite").read_bytes(),
            "labelmap.txt": (MODELS / "oidv4_labelmap.txt").read_bytes(),
        }
    )


def model_desired(name: str, version: str, url: str, bundle: Bundle, **extra) -> dict:
    return {"model": {"name": name, "version": version, "url": url, "sha256": bundle.sha256, "size": len(bundle.data)}, **extra}
