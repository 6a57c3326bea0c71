"""Desired properties -> what model the device should run, validated.

Two shapes are accepted:

* the reference design's keys: ``FileName``, ``DownloadUrl``, ``ContentMD5`` (hex or the
  base64 form Blob Storage uses); the model name and version come from the file name
  (``tiny-yolov3-11_1.0.zip`` -> ``tiny-yolov3-11`` / ``1.0``);
* ours: ``model: {name, version, url, sha256, md5, size, signature, allow_downgrade,
  urgent, delta, compression}`` (``url`` may be left out for a version the device already
  holds in its store: a rollback by name and version), plus ``inference: {score_threshold}`` and ``download:
  {max_bytes_per_second, windows, range_bytes}``. ``signature`` is the bundle's Ed25519
  signature (base64; ``service.update.signing``), checked by the updater when the device has
  trusted keys; ``allow_downgrade: true`` lets the updater activate a version lower than
  the highest one it ever activated (a deliberate rollback); ``urgent: true`` downloads
  outside the download windows (``service.update.schedule``); ``delta: {base_version,
  base_sha256, url, sha256, size, engine}`` is a patch from a bundle the device may hold
  to this one (``service.update.delta``), tried before ``url`` when the device has that exact
  base; it needs ``sha256``, the hash of the resulting bundle; ``compression: zstd``
  says ``url`` serves the bundle as a zstd frame (``size`` is the frame's, the hashes and
  the signature the bundle's). The reference design's keys carry none of these.

Variants: ``model.variants`` is an ordered object of bundles of the same model version,
e.g. ``{"int8": {url, sha256, size, ...}, "fp32": {...}}``, each with the bundle keys of
``model`` (``url``, ``sha256``, ``md5``, ``size``, ``signature``, ``delta``,
``compression``), ``precision`` (default: the variant's name when it is a precision, e.g.
``int8``) and ``version`` (the model version it belongs to: an entry of another version,
left by IoT Hub merging an older patch, is never used). The device takes the first one
its CPU runs well (``service.update.variants``) and verifies it; ``model.url`` beside them
is the last resort. ``model.variant`` pins one by name.

``model`` wins when both are present. Several models at once: ``models``, split into one
document per model by ``service.update.pool_desired``. A malformed document raises ``DesiredError`` and
changes nothing. IoT Hub limits each property to 4 KB and the desired document to 32 KB.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Mapping
from urllib.parse import urlsplit

from service.update.desired_bundle import (
    DesiredDelta,
    DesiredError,
    DesiredVariant,
    bundle_keys,
    check_md5,
    check_name_part,
    check_url,
    parse_variants,
)
from service.update.schedule import DownloadWindow, WindowError, parse_windows

MAX_PROPERTY_BYTES = 4 * 1024
MAX_DOCUMENT_BYTES = 32 * 1024
_VERSIONED_FILE = re.compile(r"^(?P<name>.+?)[-_]v?(?P<version>\d+(?:\.\d+)*)$")
MIN_RANGE_BYTES = 64 * 1024
# Every key of ``model``: each describes the one bundle, so a patch for a new bundle sets
# those it does not use to null (IoT Hub merges desired patches key by key).
MODEL_KEYS = ("name", "version", "url", "sha256", "md5", "size", "signature", "allow_downgrade", "urgent", "delta",
              "compression", "variants", "variant")


@dataclass(frozen=True)
class DesiredModel:
    name: str
    version: str
    url: str | None  # None: only a version this device already holds (a rollback to a staged version)
    file_name: str
    sha256: str | None
    md5: str | None  # lowercase hex
    size: int | None
    signature: str | None = None  # base64 Ed25519 signature (service.update.signing), verified by the updater
    allow_downgrade: bool = False  # may activate a version below the highest ever activated for this name
    version_is_digest: bool = False  # the version is an MD5 prefix (reference keys, no version): no order
    urgent: bool = False  # download outside the download windows
    delta: DesiredDelta | None = None
    compression: str | None = None  # "zstd": ``url`` serves the bundle as a zstd frame; ``size`` is the frame's
    variants: tuple[DesiredVariant, ...] = ()  # in the twin's order of preference
    pinned_variant: str | None = None  # model.variant: this one, whatever the CPU
    variant: str | None = None  # the variant this bundle is (service.update.variants fills the bundle keys in)

    @property
    def bundle_size(self) -> int | None:
        """The bundle's own size, when the twin says it: with ``compression``, ``size`` is the
        frame's, and a patch producing the bundle must not be held to it."""
        return None if self.compression else self.size


@dataclass(frozen=True)
class DesiredState:
    version: int | None  # the twin's $version
    model: DesiredModel | None
    score_threshold: float | None
    max_bytes_per_second: int | None
    windows: tuple[DownloadWindow, ...] | None = None  # None: the device's configured windows
    range_bytes: int | None = None  # None: the device's configured range size


def _size_of(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


def _check_sizes(desired: Mapping[str, Any]) -> None:
    if _size_of(desired) > MAX_DOCUMENT_BYTES:
        raise DesiredError(f"desired document is over IoT Hub's {MAX_DOCUMENT_BYTES} byte limit")
    for key, value in desired.items():
        if not key.startswith("$") and _size_of(value) > MAX_PROPERTY_BYTES:
            raise DesiredError(f"desired property {key!r} is over IoT Hub's {MAX_PROPERTY_BYTES} byte limit")


def _reference_model(desired: Mapping[str, Any]) -> DesiredModel:
    file_name = desired.get("FileName")
    if not isinstance(file_name, str) or not file_name or "/" in file_name or "\\" in file_name:
        raise DesiredError("FileName must be a plain file name")
    url = check_url(desired.get("DownloadUrl"), "DownloadUrl")
    md5 = check_md5(desired.get("ContentMD5"), "ContentMD5")
    if md5 is None:
        raise DesiredError("ContentMD5 is required with FileName/DownloadUrl: an unverified download is never staged")
    stem = PurePosixPath(file_name).stem
    match = _VERSIONED_FILE.match(stem)
    digest_version = False
    if match:
        name, version = match.group("name"), match.group("version")
    elif md5:
        name, version, digest_version = stem, md5[:12], True
    else:
        raise DesiredError("FileName has no version (e.g. model_1.0.zip) and there is no ContentMD5 to name it")
    return DesiredModel(
        name=check_name_part("name", name, "FileName"),
        version=check_name_part("version", version, "FileName"),
        url=url,
        file_name=file_name,
        sha256=None,
        md5=md5,
        size=None,
        version_is_digest=digest_version,
    )


def _rich_model(raw: Any) -> DesiredModel:
    if not isinstance(raw, Mapping):
        raise DesiredError("model must be an object")
    unknown = set(raw) - set(MODEL_KEYS)
    if unknown:
        raise DesiredError(f"unknown model keys: {', '.join(sorted(unknown))}")
    variants = parse_variants(raw.get("variants"))
    keys = bundle_keys(raw, "model", url_required=False)
    if not variants and keys["sha256"] is None and keys["md5"] is None:
        raise DesiredError("model needs sha256 (or at least md5): an unverified download is never staged")
    if variants and keys["url"] is not None and keys["sha256"] is None and keys["md5"] is None:
        raise DesiredError("model.url beside model.variants needs model.sha256 (or at least md5)")
    pinned = raw.get("variant")
    if pinned is not None and not isinstance(pinned, str):
        raise DesiredError("model.variant must be the name of one of model.variants")
    if pinned is not None and pinned not in {v.name for v in variants}:
        raise DesiredError(f"model.variant {pinned!r} is not one of model.variants ({', '.join(v.name for v in variants) or 'none'})")
    allow_downgrade = _flag(raw, "allow_downgrade")
    urgent = _flag(raw, "urgent")
    name = check_name_part("name", raw.get("name"), "model.name")
    version = check_name_part("version", raw.get("version"), "model.version")
    url = keys["url"]
    return DesiredModel(
        name=name,
        version=version,
        file_name=(PurePosixPath(urlsplit(url).path).name if url else "") or f"{name}_{version}.zip",
        allow_downgrade=allow_downgrade,
        urgent=urgent,
        variants=variants,
        pinned_variant=pinned,
        **keys,
    )


def _flag(raw: Mapping[str, Any], key: str) -> bool:
    value = raw.get(key)
    if value is not None and not isinstance(value, bool):
        raise DesiredError(f"model.{key} must be true or false")
    return bool(value)


def _threshold(desired: Mapping[str, Any]) -> float | None:
    inference = desired.get("inference")
    if inference is None:
        return None
    if not isinstance(inference, Mapping):
        raise DesiredError("inference must be an object")
    value = inference.get("score_threshold")
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise DesiredError("inference.score_threshold must be a number between 0 and 1")
    return float(value)


def _download(desired: Mapping[str, Any]) -> Mapping[str, Any]:
    download = desired.get("download")
    if download is None:
        return {}
    if not isinstance(download, Mapping):
        raise DesiredError("download must be an object")
    unknown = set(download) - {"max_bytes_per_second", "windows", "range_bytes"}
    if unknown:
        raise DesiredError(f"unknown download keys: {', '.join(sorted(unknown))}")
    return download


def _windows(download: Mapping[str, Any]) -> tuple[DownloadWindow, ...] | None:
    value = download.get("windows")
    if value is None:
        return None
    if not isinstance(value, list):
        raise DesiredError("download.windows must be a list (empty: no windows, download any time)")
    try:
        return parse_windows(value)
    except WindowError as exc:
        raise DesiredError(str(exc)) from None


def _range_bytes(download: Mapping[str, Any]) -> int | None:
    value = download.get("range_bytes")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not (value == 0 or value >= MIN_RANGE_BYTES):
        raise DesiredError(f"download.range_bytes must be 0 (one request) or an integer >= {MIN_RANGE_BYTES}")
    return value


def _rate(download: Mapping[str, Any]) -> int | None:
    value = download.get("max_bytes_per_second")
    if value is None or value == 0:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1024:
        raise DesiredError("download.max_bytes_per_second must be an integer >= 1024 (or 0 for no cap)")
    return value


def parse_desired(desired: Mapping[str, Any]) -> DesiredState:
    """Validate the whole desired document (not a patch: merge patches first)."""
    if not isinstance(desired, Mapping):
        raise DesiredError("desired properties must be an object")
    if "$invalid" in desired:  # the local twin's file did not parse
        raise DesiredError(f"desired document is not valid JSON: {desired['$invalid']}")
    if "$error" in desired:  # service.update.pool_desired: the part of the document for this model is bad
        raise DesiredError(desired["$error"])
    _check_sizes(desired)
    version = desired.get("$version")
    download = _download(desired)
    if "model" in desired and desired["model"] is not None:
        model = _rich_model(desired["model"])
    elif any(k in desired for k in ("FileName", "DownloadUrl", "ContentMD5")):
        model = _reference_model(desired)
    else:
        model = None
    return DesiredState(
        version=version if isinstance(version, int) else None,
        model=model,
        score_threshold=_threshold(desired),
        max_bytes_per_second=_rate(download),
        windows=_windows(download),
        range_bytes=_range_bytes(download),
    )


def merge_patch(document: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """JSON merge patch, as IoT Hub applies desired patches: null deletes a key."""
    merged = dict(document)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_patch(merged[key], value)
        else:
            merged[key] = value
    return merged
