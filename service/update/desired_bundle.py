"""One bundle's keys in a desired document, checked: those of ``model`` itself and of each
of ``model.variants`` (``service.update.desired`` reads the rest of the document). A value
that does not check raises ``DesiredError`` naming the key.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from service.repository import RepositoryError, check_part
from service.update.verify import normalize_md5

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
# The keys of one bundle: of ``model`` itself, or of each of ``model.variants``.
BUNDLE_KEYS = ("url", "sha256", "md5", "size", "signature", "delta", "compression")
VARIANT_KEYS = (*BUNDLE_KEYS, "precision", "version")
PRECISIONS = ("int8", "uint8", "int4", "fp16", "bf16", "fp32")


class DesiredError(ValueError):
    """The desired document is malformed; the message says which key and why."""


@dataclass(frozen=True)
class DesiredDelta:
    """A patch that turns the bundle of ``base_version`` (SHA-256 ``base_sha256``) into the
    model's bundle; the model's ``sha256`` checks the result."""

    base_version: str
    base_sha256: str
    url: str
    sha256: str  # of the patch file
    size: int | None
    engine: str = "zstd"


@dataclass(frozen=True)
class DesiredVariant:
    """One bundle of ``model.variants``: the same model version in another form (int8, fp32)."""

    name: str
    url: str
    sha256: str | None
    md5: str | None
    size: int | None
    signature: str | None = None
    delta: DesiredDelta | None = None
    compression: str | None = None
    precision: str | None = None  # int8 is taken only where the CPU runs it well
    version: str | None = None  # the model version it was written for (None: not said)


def check_url(value: Any, key: str) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
        raise DesiredError(f"{key} must be an http(s) URL")
    return value


def check_md5(value: Any, key: str) -> str | None:
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return normalize_md5(value)
    except ValueError:
        raise DesiredError(f"{key} must be an MD5 digest in hex or base64") from None


def check_name_part(kind: str, value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise DesiredError(f"{key} must be a string")
    try:
        return check_part(kind, value)
    except RepositoryError as exc:
        raise DesiredError(f"{key}: {exc}") from None


def check_sha256(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise DesiredError(f"{key} must be 64 hex digits")
    return value.lower()


def check_size(value: Any, key: str) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise DesiredError(f"{key} must be a positive integer (bytes)")
    return value


def parse_delta(raw: Any, where: str = "model.delta") -> DesiredDelta | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise DesiredError(f"{where} must be an object")
    unknown = set(raw) - {"base_version", "base_sha256", "url", "sha256", "size", "engine"}
    if unknown:
        raise DesiredError(f"unknown {where} keys: {', '.join(sorted(unknown))}")
    engine = raw.get("engine", "zstd")
    if not isinstance(engine, str) or not engine:
        raise DesiredError(f"{where}.engine must be a string (e.g. zstd)")
    return DesiredDelta(
        base_version=check_name_part("version", raw.get("base_version"), f"{where}.base_version"),
        base_sha256=check_sha256(raw.get("base_sha256"), f"{where}.base_sha256"),
        url=check_url(raw.get("url"), f"{where}.url"),
        sha256=check_sha256(raw.get("sha256"), f"{where}.sha256"),
        size=check_size(raw.get("size"), f"{where}.size"),
        engine=engine,
    )


def bundle_keys(raw: Mapping[str, Any], where: str, url_required: bool) -> dict[str, Any]:
    """The keys that describe one bundle (of ``model`` or of a variant), checked."""
    url = None if raw.get("url") is None else check_url(raw.get("url"), f"{where}.url")
    if url is None and url_required:
        raise DesiredError(f"{where}.url is required: where the device downloads this bundle")
    sha256 = None if raw.get("sha256") is None else check_sha256(raw["sha256"], f"{where}.sha256")
    md5 = check_md5(raw.get("md5"), f"{where}.md5")
    signature = raw.get("signature")
    if signature is not None and (not isinstance(signature, str) or not signature.strip()):
        raise DesiredError(f"{where}.signature must be a base64 string (from `python -m service bundle --sign`)")
    compression = raw.get("compression")
    if compression not in (None, "zstd"):
        raise DesiredError(f"{where}.compression must be zstd (or absent: the url serves the bundle itself)")
    delta = parse_delta(raw.get("delta"), f"{where}.delta")
    if delta is not None and sha256 is None:
        raise DesiredError(f"{where}.delta needs {where}.sha256: the bundle a patch produces is checked against it")
    if url is None and (delta is not None or compression is not None):
        raise DesiredError(f"{where}.delta and {where}.compression need {where}.url: the full bundle they describe")
    return {"url": url, "sha256": sha256, "md5": md5, "size": check_size(raw.get("size"), f"{where}.size"),
            "signature": signature.strip() if signature else None, "delta": delta, "compression": compression}


def parse_variants(raw: Any) -> tuple[DesiredVariant, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or not raw:
        raise DesiredError("model.variants must be an object of variants, e.g. {\"int8\": {...}, \"fp32\": {...}}")
    variants = []
    for name, entry in raw.items():
        where = f"model.variants.{name}"
        check_name_part("variant", name, where)
        if entry is None:  # IoT Hub deletes null keys; a local patch may still carry one
            continue
        if not isinstance(entry, Mapping):
            raise DesiredError(f"{where} must be an object")
        unknown = set(entry) - set(VARIANT_KEYS)
        if unknown:
            raise DesiredError(f"unknown {where} keys: {', '.join(sorted(unknown))}")
        keys = bundle_keys(entry, where, url_required=True)
        if keys["sha256"] is None and keys["md5"] is None:
            raise DesiredError(f"{where} needs sha256 (or at least md5): an unverified download is never staged")
        precision = entry.get("precision") or (name if name in PRECISIONS else None)
        if precision is not None and precision not in PRECISIONS:
            raise DesiredError(f"{where}.precision must be one of {', '.join(PRECISIONS)}")
        version = entry.get("version")
        if version is not None:
            version = check_name_part("version", version, f"{where}.version")
        variants.append(DesiredVariant(name=name, precision=precision, version=version, **keys))
    return tuple(variants)  # every entry null (each dropped by a patch): no variants
