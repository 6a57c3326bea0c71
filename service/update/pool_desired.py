"""The desired document -> one document per model lane.

Desired ``models`` is an object keyed by model name, each value shaped like ``model``
(the name comes from the key; an ``inference: {score_threshold}`` inside applies to that
model alone). ``model`` (or the reference design's ``FileName``/``DownloadUrl``/
``ContentMD5``) names the **default** model, as it always has. Each lane then handles its
document alone (``service.update.updater``): the default lane gets the document without
``models``; the lane of ``models.<name>`` gets ``{"model": {..., "name": <name>},
"inference": ..., "download": ...}`` (the top-level ``download`` settings apply to every
model). A name whose key is gone (IoT Hub deletes a desired property set to null) gets a
document without a model: its lane takes it out of the pool.

IoT Hub limits each property to 4 KB: here each ``models.<name>`` counts as one (the
whole ``models`` object may hold more), and the document stays within 32 KB.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from service.repository import RepositoryError, check_part
from service.update.desired import MAX_DOCUMENT_BYTES, MAX_PROPERTY_BYTES, DesiredError

MODELS_KEY = "models"
ERROR_KEY = "$error"  # a lane document the lane must refuse with this message (parse_desired)


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


def default_model_name(document: Mapping[str, Any]) -> str | None:
    model = document.get("model")
    return model.get("name") if isinstance(model, Mapping) else None


def model_entries(document: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``models``, checked: an object of name -> model object; raises ``DesiredError``."""
    if _size({k: v for k, v in document.items() if not k.startswith("$")}) > MAX_DOCUMENT_BYTES:
        raise DesiredError(f"desired document is over IoT Hub's {MAX_DOCUMENT_BYTES} byte limit")
    raw = document.get(MODELS_KEY)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise DesiredError("models must be an object keyed by model name")
    default = default_model_name(document)
    entries = {}
    for name, value in raw.items():
        try:
            check_part("name", name)
        except RepositoryError as exc:
            raise DesiredError(f"models key {name!r}: {exc}") from None
        if value is None:  # a patch's null, already merged away in a full document
            continue
        if not isinstance(value, Mapping):
            raise DesiredError(f"models.{name} must be an object (or null to remove the model)")
        if value.get("name", name) != name:
            raise DesiredError(f"models.{name}.name is {value.get('name')!r}: the key is the model's name")
        if name == default:
            raise DesiredError(f"{name!r} is both model (the default) and a key of models; name it once")
        if _size(value) > MAX_PROPERTY_BYTES:
            raise DesiredError(f"desired property models.{name} is over IoT Hub's {MAX_PROPERTY_BYTES} byte limit")
        entries[name] = value
    return entries


def lane_documents(document: Mapping[str, Any], names: set[str]) -> tuple[dict, dict[str, dict]]:
    """The default lane's document, and one per model of ``models`` plus one per name of
    ``names`` (models the pool holds) that ``models`` no longer has: a removal.

    A malformed ``models`` changes no lane: the default lane gets a document it refuses
    (reported on ``model``), the others get nothing."""
    meta = {k: v for k, v in document.items() if k.startswith("$")}
    default = {k: v for k, v in document.items() if k != MODELS_KEY}
    try:
        entries = model_entries(document)
    except DesiredError as exc:
        return {**meta, ERROR_KEY: str(exc)}, {}
    lanes = {}
    for name, value in entries.items():
        model = {k: v for k, v in value.items() if k != "inference"}
        lane = {**meta, "model": {**model, "name": name}}
        if value.get("inference") is not None:
            lane["inference"] = value["inference"]
        if document.get("download") is not None:
            lane["download"] = document["download"]
        lanes[name] = lane
    for name in names - set(entries) - {default_model_name(document)}:
        lanes[name] = dict(meta)
    return default, lanes
