"""Host artifacts: a model's weights prepared once for this CPU and runtime, then
memory-mapped (and so shared through the page cache) by every worker.

Loading a model by path gives each worker a private copy of its weights (ONNX Runtime
copies and pre-packs them on the heap; LiteRT's XNNPACK packs them on the heap). The
supervisor prepares, once per model version and host:

* ONNX: the model optimised for this host (``ORT_ENABLE_ALL``) with its initializers and
  pre-packed weights in an external file; workers open it with optimisations disabled
  and ONNX Runtime maps the weights file;
* TFLite: an XNNPACK weight cache file; workers open the model with LiteRT's
  ``CompiledModel`` pointed at it, and XNNPACK maps the packed weights.

Layout: ``<version dir>/.host/<key>/`` with the files and a ``ready`` marker written
last. The key names the runtime version and the CPU (model, feature flags, machine), so
an image upgrade or a move to another CPU finds no artifact and the original model is
used until the supervisor prepares a new one. Workers only read here; an artifact that
is incomplete, stale or corrupt is ignored (with a warning) and the original is loaded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from twinfer.cpu import cpuinfo_lines
from twinfer.engines import format_of, runtime
from twinfer.store_layout import HOST_DIR

log = logging.getLogger("twinfer.engines")

READY_MARKER = "ready"
# 2: a TFLite artifact records each tensor's quantization; earlier artifacts are prepared again.
MARKER_SCHEMA = 2

_CPUINFO_KEYS = ("model name", "flags", "Features", "CPU implementer", "CPU architecture", "CPU variant", "CPU part")


class ArtifactError(Exception):
    """The artifact is absent, incomplete, stale or corrupt; the message says which."""


def artifact_files(fmt: str) -> Mapping[str, str]:
    """The host artifact's files of a format: role -> file name (the runtime's plugin says)."""
    return runtime(fmt).artifact_files


def runtime_version(fmt: str) -> str:
    """The version of the runtime that reads (and wrote) the artifact."""
    return runtime(fmt).version()


@lru_cache(maxsize=1)
def cpu_identity() -> str:
    """What the optimised graph and packed weights depend on: the CPU model, its feature
    flags (AVX2/AVX-512/VNNI on x86, NEON/SVE/I8MM/dotprod on Arm) and the machine type."""
    lines = cpuinfo_lines()
    values = {f"{name}={' '.join(sorted(value.split()))}" for name, value in lines if name in _CPUINFO_KEYS}
    if not lines:
        values.add(f"processor={platform.processor()}")
    return "\n".join([f"machine={platform.machine()}", *sorted(values)])


@lru_cache(maxsize=1)
def cpu_fingerprint() -> str:
    return hashlib.sha256(cpu_identity().encode()).hexdigest()[:12]


def host_key(fmt: str) -> str:
    """e.g. ``ort-1.32.0-3f9c0a1b2c4d``: runtime, its version, a short hash of the CPU."""
    version = "".join(c if c.isalnum() or c in "._+" else "_" for c in runtime_version(fmt))
    return f"{runtime(fmt).short_name}-{version}-{platform.machine() or 'unknown'}-{cpu_fingerprint()}"


def host_root(model_path: Path) -> Path:
    return model_path.parent / HOST_DIR


def host_artifact_dir(model_path: Path) -> Path:
    """``<version dir>/.host/<key>/`` for this host and runtime (it may not exist)."""
    return host_root(model_path) / host_key(format_of(model_path))


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class HostArtifact:
    """A prepared artifact (checked complete, or a candidate being checked by the supervisor)."""

    format: str
    directory: Path
    key: str
    marker: dict

    def path(self, role: str) -> Path:
        return self.directory / artifact_files(self.format)[role]

    @property
    def signature(self) -> dict | None:
        """TFLite: the interpreter's signature recorded at preparation (names, shapes, tensor indices)."""
        return self.marker.get("signature")


def read_marker(directory: Path) -> dict:
    path = directory / READY_MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError("no ready marker (not prepared, or preparation did not finish)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"unreadable ready marker: {exc}") from None
    if not isinstance(marker, dict):
        raise ArtifactError("ready marker is not a JSON object")
    return marker


def check_artifact(directory: Path, model_path: Path, verify_content: bool = True) -> HostArtifact:
    """Return the artifact in ``directory`` if it is complete and belongs to ``model_path``
    on this host; raise ``ArtifactError`` otherwise.

    ``verify_content`` compares every file's SHA-256 with the marker's (a corrupt or
    half-overwritten file must not be mapped as weights): about 0.8 ms per MB here."""
    fmt = format_of(model_path)
    key = host_key(fmt)
    marker = read_marker(directory)
    if marker.get("schema") != MARKER_SCHEMA:
        raise ArtifactError(f"marker schema {marker.get('schema')!r}, expected {MARKER_SCHEMA}")
    if marker.get("format") != fmt:
        raise ArtifactError(f"artifact is for {marker.get('format')!r}, the model is {fmt!r}")
    if marker.get("key") != key:
        raise ArtifactError(f"artifact was prepared for {marker.get('key')!r}, this host is {key!r}")
    source = marker.get("source") or {}
    try:
        size = model_path.stat().st_size
    except OSError as exc:
        raise ArtifactError(f"model file: {exc}") from None
    if source.get("file") != model_path.name or source.get("size") != size:
        raise ArtifactError(f"artifact was prepared from {source.get('file')!r} ({source.get('size')} bytes)")
    files = marker.get("files") or {}
    for role, name in artifact_files(fmt).items():
        expected = files.get(name)
        if not isinstance(expected, dict):
            raise ArtifactError(f"marker does not list {name}")
        path = directory / name
        try:
            actual_size = path.stat().st_size
        except OSError:
            raise ArtifactError(f"{name} is missing") from None
        if actual_size != expected.get("size"):
            raise ArtifactError(f"{name} is {actual_size} bytes, the marker says {expected.get('size')}")
        if verify_content and file_sha256(path) != expected.get("sha256"):
            raise ArtifactError(f"{name} does not match its SHA-256 in the marker (corrupt)")
    return HostArtifact(fmt, directory, key, marker)


def find_host_artifact(model_path: Path, verify_content: bool = True) -> HostArtifact | None:
    """The complete artifact for ``model_path`` on this host, or None (with a warning when
    one is present but unusable): the caller then loads the original model."""
    directory = host_artifact_dir(model_path)
    if not directory.is_dir():
        return None
    try:
        return check_artifact(directory, model_path, verify_content)
    except ArtifactError as exc:
        log.warning("ignoring host artifact %s: %s; loading the original model", directory, exc)
        return None


def write_ready_marker(directory: Path, marker: dict) -> None:
    """Written last (and durably) by the supervisor: the artifact is complete."""
    data = json.dumps({"schema": MARKER_SCHEMA, **marker}, indent=2, sort_keys=True).encode()
    tmp = directory / f".{READY_MARKER}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, directory / READY_MARKER)
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
