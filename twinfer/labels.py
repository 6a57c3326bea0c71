"""Label files: a plain text file beside the model, or the one a .tflite carries.

A .tflite with TFLite Model Metadata has a ZIP appended holding its label file; the
reference design's ``ssd_mobilenet_v1_1_metadata_1.tflite`` is such a file.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

BACKGROUND_PLACEHOLDERS = {"???", "background", "__background__"}


def parse_labels(text: str) -> list[str]:
    """One label per line; trailing blank lines dropped, inner placeholders kept so ids align."""
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def read_label_file(path: Path) -> list[str]:
    return parse_labels(path.read_text(encoding="utf-8"))


def embedded_tflite_labels(model_path: Path) -> list[str] | None:
    """Labels from the ZIP appended to a .tflite by the metadata writer, if any."""
    try:
        with zipfile.ZipFile(io.BytesIO(model_path.read_bytes())) as archive:
            names = [n for n in archive.namelist() if n.lower().endswith(".txt")]
            if not names:
                return None
            preferred = next((n for n in names if "label" in n.lower()), names[0])
            return parse_labels(archive.read(preferred).decode("utf-8"))
    except zipfile.BadZipFile:
        return None


def label_offset(labels: list[str], model_counts_background: bool, class_count: int | None = None) -> int:
    """1 when the file starts with a background line that the model's class ids skip. A
    model that says how many classes it has (a classifier) skips it only when the file has
    exactly one line more: TF-slim's 1001-class models count "background" as class 0."""
    if not labels or labels[0].lower() not in BACKGROUND_PLACEHOLDERS:
        return 0
    if class_count is not None:
        return 1 if len(labels) == class_count + 1 else 0
    return 0 if model_counts_background else 1
