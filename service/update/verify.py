"""Checksums of a downloaded bundle, against the twin's SHA-256 or the blob's Content-MD5.

Both digests come out of one read (bundles can be large and edge storage slow), so the
caller can log and record them whichever one it checked.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from pathlib import Path

_BLOCK = 1024 * 1024
_HEX = re.compile(r"[0-9a-fA-F]+")


class VerifyError(Exception):
    """A digest mismatch: the file is not the bundle that was announced."""

    def __init__(self, path: Path, algorithm: str, expected: str, actual: str) -> None:
        super().__init__(f"{algorithm} mismatch for {path.name}: expected {expected}, got {actual}")
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256 hex, md5 hex) in one pass over 1 MiB blocks."""
    sha256 = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)  # Blob Storage's integrity check, not a security claim
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            sha256.update(block)
            md5.update(block)
    return sha256.hexdigest(), md5.hexdigest()


def normalize_md5(value: str) -> str:
    """32 hex characters, or the 24-character base64 of Blob Storage's Content-MD5 -> lowercase hex."""
    text = value.strip()
    if len(text) == 32 and _HEX.fullmatch(text):
        return text.lower()
    if len(text) == 24:
        try:
            digest = base64.b64decode(text, validate=True)
        except binascii.Error:
            digest = b""
        if len(digest) == 16:
            return digest.hex()
    raise ValueError(f"not an MD5 digest (32 hex characters or 24 base64 characters): {value!r}")


def _normalize_sha256(value: str) -> str:
    text = value.strip()
    if len(text) != 64 or not _HEX.fullmatch(text):
        raise ValueError(f"not a SHA-256 digest (64 hex characters): {value!r}")
    return text.lower()


def verify_file(path: Path, sha256: str | None, md5: str | None) -> tuple[str, str]:
    """Check SHA-256 when given, else MD5 when given; returns (sha256 hex, md5 hex).

    Raises ``VerifyError`` on a mismatch and ``ValueError`` for a malformed expected digest.
    """
    expected_sha256 = _normalize_sha256(sha256) if sha256 is not None else None
    expected_md5 = normalize_md5(md5) if md5 is not None else None
    actual_sha256, actual_md5 = file_digests(path)
    if expected_sha256 is not None:
        if actual_sha256 != expected_sha256:
            raise VerifyError(path, "SHA-256", expected_sha256, actual_sha256)
    elif expected_md5 is not None and actual_md5 != expected_md5:
        raise VerifyError(path, "MD5", expected_md5, actual_md5)
    return actual_sha256, actual_md5
