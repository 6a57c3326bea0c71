"""What an Ultralytics export says about itself: class names, input size and task.

Ultralytics' exporter writes the same dict into every format. An ONNX export carries it
as ``metadata_props``, every value ``str()``-ed (``names`` is a Python dict literal
``"{0: 'person', ...}"``, ``imgsz`` ``"[640, 640]"``). A TFLite export has a ZIP appended
holding ``metadata.json`` (``names`` an object with string keys); older ones (written
with tflite-support) hold one text file with the whole dict as a Python literal.

Literals are read with ``ast.literal_eval`` after a size check, never ``eval``. A value
that does not parse or validate is ignored with a warning: the model still serves, with
``class_N`` labels, as it would without metadata.
"""
from __future__ import annotations

import ast
import json
import logging
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from twinfer.signature import ModelSignature

log = logging.getLogger("twinfer.models")

METADATA_JSON = "metadata.json"
MAX_CLASSES = 10_000
MAX_NAME_CHARS = 256
MAX_LITERAL_CHARS = 1_000_000  # the names of MAX_CLASSES classes fit; parsing more is refused unread
MAX_ZIP_ENTRY_BYTES = 2_000_000
MAX_SIDE = 16_384
DETECT = "detect"


@dataclass(frozen=True)
class UltralyticsMetadata:
    """The parts twinfer uses; each is empty/None when missing or malformed."""

    names: tuple[str, ...] = ()
    imgsz: tuple[int, int] | None = None  # (height, width), Ultralytics' order
    task: str | None = None


def _literal(value: Any) -> Any:
    """A str()-ed Python literal parsed safely, or the value itself when already parsed."""
    if not isinstance(value, str):
        return value
    if len(value) > MAX_LITERAL_CHARS:
        raise ValueError(f"{len(value)} characters, more than {MAX_LITERAL_CHARS}")
    try:
        return ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ValueError(f"not a Python literal ({type(exc).__name__})") from None


def parse_names(value: Any) -> tuple[str, ...]:
    """Class names in id order from ``{id: name}`` (int or digit-string ids) or a list."""
    names = _literal(value)
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise ValueError("not a non-empty {id: name} mapping")
    if len(names) > MAX_CLASSES:
        raise ValueError(f"{len(names)} classes, more than {MAX_CLASSES}")
    by_id: dict[int, str] = {}
    for key, name in names.items():
        if isinstance(key, str) and key.isdigit():
            key = int(key)  # JSON object keys are strings
        if not isinstance(key, int) or isinstance(key, bool):
            raise ValueError(f"class id {key!r} is not an integer")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
            raise ValueError(f"class {key}: name {name!r} is not a string of 1..{MAX_NAME_CHARS} characters")
        by_id[key] = name.strip()
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError(f"class ids are not 0..{len(by_id) - 1}")
    return tuple(by_id[i] for i in range(len(by_id)))


def parse_imgsz(value: Any) -> tuple[int, int]:
    """``640``, ``[640]`` or ``[height, width]`` -> (height, width)."""
    size = _literal(value)
    if isinstance(size, int):
        size = [size]
    if not isinstance(size, (list, tuple)) or len(size) not in (1, 2):
        raise ValueError(f"{value!r} is not a size or [height, width]")
    if not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_SIDE for s in size):
        raise ValueError(f"{value!r}: sides must be integers 1..{MAX_SIDE}")
    return (size[0], size[-1])


def parse_metadata(raw: Mapping[str, Any], source: str) -> UltralyticsMetadata | None:
    """The Ultralytics keys of a model's own metadata; None unless it is an Ultralytics
    export's (it has ``names``, or ``author`` says so: other exporters' ``task`` or
    ``imgsz`` keys are not read as Ultralytics').

    ``source`` names the model in warnings."""
    if "names" not in raw and "Ultralytics" not in str(raw.get("author", "")):
        return None
    found = UltralyticsMetadata()
    for key, parse in (("names", parse_names), ("imgsz", parse_imgsz)):
        if key in raw:
            try:
                found = replace(found, **{key: parse(raw[key])})
            except ValueError as exc:
                log.warning("%s: ignoring the Ultralytics metadata %r: %s", source, key, exc)
    task = raw.get("task")
    if task is not None:
        if isinstance(task, str) and 0 < len(task) <= 32:
            found = replace(found, task=task)
        else:
            log.warning("%s: ignoring the Ultralytics metadata 'task': %r is not a task name", source, task)
    return found


def tflite_metadata(model_path: Path) -> dict[str, Any]:
    """The dict an Ultralytics TFLite export appends in a ZIP; empty when there is none.

    ``metadata.json`` (current exporter) is JSON; otherwise a single text entry holding
    a Python dict literal with ``names`` (tflite-support exports). A TFLite Model
    Metadata label file (``twinfer.labels``) is neither, and is left alone."""
    try:
        with zipfile.ZipFile(model_path) as archive:  # finds the ZIP after the flatbuffer
            entries = archive.infolist()
            entry = next((e for e in entries if e.filename == METADATA_JSON), entries[0] if len(entries) == 1 else None)
            if entry is None or entry.file_size > MAX_ZIP_ENTRY_BYTES:
                return {}
            text = archive.read(entry).decode("utf-8")
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError):
        return {}
    try:
        found = json.loads(text) if entry.filename == METADATA_JSON else _literal(text)
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        if entry.filename == METADATA_JSON:
            log.warning("%s: ignoring %s: %s", model_path.name, METADATA_JSON, exc)
        return {}
    return found if isinstance(found, dict) and (entry.filename == METADATA_JSON or "names" in found) else {}


def decoder_options(model_format: str, decoder: str) -> dict[str, Any]:
    """Defaults an export implies: Ultralytics' TFLite exports give cx, cy, w, h divided
    by the input size (it keeps int8 quantisation accurate)."""
    return {"boxes": "normalized"} if model_format == "tflite" and decoder == "yolo" else {}


def fill_input_size(signature: ModelSignature, imgsz: tuple[int, int], layout: str, source: str) -> ModelSignature:
    """The signature with a dynamic image height/width taken from ``imgsz``.

    A fixed side is the model's and stays; one that disagrees with ``imgsz`` is logged."""
    image = signature.image_input
    axes = (2, 3) if layout == "NCHW" else (1, 2)
    shape = list(image.shape)
    for axis, wanted in zip(axes, imgsz):
        shape[axis] = wanted if shape[axis] is None else shape[axis]
    if tuple(shape[a] for a in axes) != imgsz:
        log.warning(
            "%s: Ultralytics imgsz %s disagrees with the input shape %s; using the input shape",
            source, list(imgsz), list(image.shape),
        )
    if tuple(shape) == image.shape:
        return signature
    resized = replace(image, shape=tuple(shape))
    return replace(signature, inputs=tuple(resized if t is image else t for t in signature.inputs))
