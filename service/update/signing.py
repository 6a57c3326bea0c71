"""Ed25519 signatures over model bundles: who may put a model on the device.

A bundle's SHA-256 proves the download is the file the twin names; it says nothing about
who named it. A signature made offline with the publisher's private key does: the device
trusts only bundles signed by one of its trusted public keys (``TWINFER_TRUSTED_KEYS``).

What is signed is not the bundle alone but its identity too, so a valid signature cannot
be replayed for another model name or version::

    b"twinfer-bundle-v1\\n" + name + b"\\n" + version + b"\\n" + sha256 (64 lowercase hex)

(UTF-8, no trailing newline). The signature travels in the twin as ``model.signature``
(standard base64 of the 64 signature bytes). A key's id is the first 16 hex digits of the
SHA-256 of its raw 32-byte public key; it is logged and printed, never secret.

Without trusted keys (the embedded default) signatures are not required; with them, an
unsigned or wrongly signed bundle is refused. Several keys may be trusted at once, so a
fleet can move to a new key without a flag day (rotation).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MESSAGE_PREFIX = b"twinfer-bundle-v1\n"
PRIVATE_KEY_FILE = "private.pem"
PUBLIC_KEY_FILE = "public.pem"
SIGNATURE_BYTES = 64
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PEM_PUBLIC = re.compile(rb"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", re.S)

# SignatureError reasons
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad signature"
NO_TRUSTED_KEY = "no trusted key"


class SignatureError(Exception):
    """A bundle's signature does not hold. ``reason``: ``unsigned``, ``bad signature`` or
    ``no trusted key``; the message says why in words."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class KeyFileError(ValueError):
    """A key file cannot be read or is not an Ed25519 key."""


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public_key: Ed25519PublicKey
    source: str  # the file it came from, for logs


@dataclass(frozen=True)
class KeyPairFiles:
    private: Path
    public: Path
    key_id: str


# --- the signed message -----------------------------------------------------------------


def _normalize_sha256(sha256: str) -> str:
    value = sha256.strip().lower() if isinstance(sha256, str) else ""
    if not _SHA256.match(value):
        raise ValueError(f"not a SHA-256 digest (64 hex characters): {sha256!r}")
    return value


def signed_message(name: str, version: str, sha256: str) -> bytes:
    """The exact bytes a bundle signature covers."""
    for label, value in (("name", name), ("version", version)):
        if not isinstance(value, str) or not value or "\n" in value:
            raise ValueError(f"model {label} must be a non-empty single-line string, got {value!r}")
    return MESSAGE_PREFIX + f"{name}\n{version}\n{_normalize_sha256(sha256)}".encode("utf-8")


# --- keys -------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def private_key_pem(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def generate_key_pair(directory: Path) -> KeyPairFiles:
    """Write ``private.pem`` (PKCS#8, unencrypted, mode 0600) and ``public.pem`` into
    ``directory`` (created if needed). Refuses to overwrite an existing key."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists; not overwriting a key")
    private_key = Ed25519PrivateKey.generate()
    # O_EXCL and the mode at creation: the private key is never readable by others, not even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_key_pem(private_key))
    os.chmod(private_path, 0o600)  # in case the umask or the filesystem widened it
    public_path.write_bytes(public_key_pem(private_key.public_key()))
    return KeyPairFiles(private_path, public_path, key_id(private_key.public_key()))


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key ({type(key).__name__})")
    return key


def _public_keys_in(path: Path) -> list[TrustedKey]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read trusted key file {path}: {exc.strerror or exc}") from None
    blocks = _PEM_PUBLIC.findall(data)
    if not blocks:
        raise KeyFileError(f"{path} holds no PEM public key (-----BEGIN PUBLIC KEY-----)")
    keys = []
    for block in blocks:
        try:
            key = serialization.load_pem_public_key(block)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(f"{path}: unreadable public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{path}: not an Ed25519 public key ({type(key).__name__})")
        keys.append(TrustedKey(key_id(key), key, str(path)))
    return keys


def load_trusted_keys(path: Path) -> list[TrustedKey]:
    """Every Ed25519 public key in a PEM file (several blocks allowed) or in the ``*.pem``
    files of a directory; duplicates are dropped. Raises ``KeyFileError`` when the path is
    missing, a file is unreadable or not Ed25519, or no key is found: a trust store that
    was meant to exist must not silently turn into "no keys, accept anything"."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".pem")
        if not files:
            raise KeyFileError(f"trusted key directory {path} holds no *.pem file")
    elif path.is_file():
        files = [path]
    else:
        raise KeyFileError(f"trusted keys path {path} does not exist")
    keys: dict[str, TrustedKey] = {}
    for file in files:
        for key in _public_keys_in(file):
            keys.setdefault(key.key_id, key)
    return list(keys.values())


# --- sign and verify --------------------------------------------------------------------


def sign(private_key: Ed25519PrivateKey, name: str, version: str, sha256: str) -> str:
    """The base64 signature of bundle ``sha256`` as model ``name`` ``version``."""
    return base64.b64encode(private_key.sign(signed_message(name, version, sha256))).decode("ascii")


def decode_signature(signature: str) -> bytes:
    """The 64 signature bytes, or ``SignatureError`` (``bad signature``) for anything else."""
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError, AttributeError):
        raise SignatureError(BAD_SIGNATURE, "model.signature is not base64") from None
    if len(raw) != SIGNATURE_BYTES:
        raise SignatureError(
            BAD_SIGNATURE, f"model.signature is {len(raw)} bytes, an Ed25519 signature is {SIGNATURE_BYTES}"
        )
    return raw


def verify(
    public_keys: Iterable[TrustedKey | Ed25519PublicKey], name: str, version: str, sha256: str, signature: str | None
) -> str:
    """The id of the trusted key that made ``signature`` over (name, version, sha256).

    Raises ``SignatureError``: ``unsigned`` (no signature), ``no trusted key`` (the list is
    empty) or ``bad signature`` (malformed, or made by none of the keys, or over another
    name, version or bundle)."""
    keys = [k if isinstance(k, TrustedKey) else TrustedKey(key_id(k), k, "") for k in public_keys]
    if signature is None or (isinstance(signature, str) and not signature.strip()):
        raise SignatureError(UNSIGNED, f"{name} {version} is not signed, and this device only accepts signed bundles")
    if not keys:
        raise SignatureError(NO_TRUSTED_KEY, "no trusted public key is configured (TWINFER_TRUSTED_KEYS)")
    raw = decode_signature(signature)
    message = signed_message(name, version, sha256)
    for key in keys:
        try:
            key.public_key.verify(raw, message)
        except InvalidSignature:
            continue
        return key.key_id
    ids = ", ".join(k.key_id for k in keys)
    raise SignatureError(
        BAD_SIGNATURE,
        f"the signature of {name} {version} (sha256 {_normalize_sha256(sha256)[:12]}...) does not verify "
        f"with any trusted key ({ids}): another key, or signed for another name, version or bundle",
    )
