"""Unpack a model bundle ZIP into an empty staging directory, trusting nothing in it.

A bundle comes off the network: its names can climb out of the directory (zip-slip), its
entries can be symlinks, its sizes can be bombs or lies. Every name and type is checked
before a byte is written, sizes are checked as declared and counted again while copying,
and on any failure ``dest`` is left as empty as it was given.
"""
from __future__ import annotations

import errno
import re
import shutil
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

_BLOCK = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")
_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what zip tools write; less code to attack
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# What zipfile raises on damaged bytes besides BadZipFile: a name flagged UTF-8 that is not
# (UnicodeDecodeError, a ValueError), flag bits for features it lacks (NotImplementedError),
# offsets and sizes that make no sense (ValueError, OverflowError, struct.error, EOFError,
# and OSError EINVAL from a negative seek on a real file), a broken deflate stream (zlib.error).
_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError, OverflowError, struct.error)


@dataclass(frozen=True)
class UnpackLimits:
    max_files: int = 16
    max_total_bytes: int = 2 * 1024**3
    max_ratio: float = 200.0  # uncompressed/compressed per member: a zip bomb signal


class BundleError(Exception):
    """``reason``: not_a_zip, unsafe_path, symlink, too_many_files, too_large, bomb, layout or
    no_space (the store's filesystem cannot hold the unpacked files)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _is_junk(name: str) -> bool:
    """Finder leaves ``__MACOSX/`` and ``.DS_Store`` in zips made on a Mac."""
    parts = name.rstrip("/").split("/")
    return parts[0] == "__MACOSX" or parts[-1] == ".DS_Store"


def _check_entry(bundle: str, info: zipfile.ZipInfo) -> None:
    """Names and types, for every entry: a hostile name is refused even where it would be skipped."""
    name = info.filename
    parts = name.rstrip("/").split("/")
    if name.startswith("/") or "\\" in name or _DRIVE.match(name) or any(p in ("", ".", "..") for p in parts):
        raise BundleError("unsafe_path", f"{bundle}: entry {name!r} is not a plain relative path")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise BundleError("symlink", f"{bundle}: entry {name!r} is a symbolic link")


def _check_readable(bundle: str, info: zipfile.ZipInfo) -> None:
    if info.flag_bits & 0x1:
        raise BundleError("not_a_zip", f"{bundle}: {info.filename!r} is encrypted")
    if info.compress_type not in _COMPRESSIONS:
        raise BundleError(
            "not_a_zip",
            f"{bundle}: {info.filename!r} uses compression method {info.compress_type}, not stored or deflate",
        )


def _flat_names(bundle: str, names: list[str]) -> list[str]:
    """Strip a single top folder shared by every file; then every file must sit at the root."""
    if not names:
        raise BundleError("layout", f"{bundle} holds no files")
    split = [name.split("/") for name in names]
    if len({parts[0] for parts in split}) == 1 and all(len(parts) > 1 for parts in split):
        split = [parts[1:] for parts in split]
    nested = ["/".join(parts) for parts in split if len(parts) > 1]
    if nested:
        raise BundleError(
            "layout", f"{bundle}: {nested[0]!r} is in a subfolder; files must sit at the root or all in one top folder"
        )
    flat = [parts[0] for parts in split]
    seen: set[str] = set()
    for name in flat:
        if name.casefold() in seen:  # case too: the store may sit on a case-insensitive filesystem
            raise BundleError("layout", f"{bundle}: more than one file is named {name!r}")
        seen.add(name.casefold())
    return flat


def _plan(bundle: str, archive: zipfile.ZipFile, limits: UnpackLimits) -> list[tuple[zipfile.ZipInfo, str]]:
    """Every check that the declared headers allow, before anything is written."""
    files = []
    for info in archive.infolist():
        _check_entry(bundle, info)
        if not info.is_dir() and not _is_junk(info.filename):
            _check_readable(bundle, info)
            files.append(info)
    if len(files) > limits.max_files:
        raise BundleError("too_many_files", f"{bundle} has {len(files)} files, at most {limits.max_files} allowed")
    declared = sum(info.file_size for info in files)
    if declared > limits.max_total_bytes:
        raise BundleError("too_large", f"{bundle} declares {declared} bytes, at most {limits.max_total_bytes} allowed")
    for info in files:
        if info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise BundleError(
                "bomb",
                f"{bundle}: {info.filename!r} expands {info.compress_size} bytes to {info.file_size} "
                f"(more than {limits.max_ratio:g} times)",
            )
    return list(zip(files, _flat_names(bundle, [info.filename for info in files])))


def _copy(bundle: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int,
          limits: UnpackLimits) -> int:
    """Stream one member, counting real bytes: the declared sizes are only a claim."""
    ratio_cap = limits.max_ratio * max(info.compress_size, 1)
    copied = 0
    try:
        with archive.open(info) as source, open(target, "xb") as out:
            while block := source.read(_BLOCK):
                copied += len(block)
                if copied > budget:
                    raise BundleError("too_large", f"{bundle}: extracting {info.filename!r} went past "
                                                   f"{limits.max_total_bytes} bytes in all")
                if copied > ratio_cap:
                    raise BundleError("bomb", f"{bundle}: {info.filename!r} expanded past {limits.max_ratio:g} "
                                              f"times its {info.compress_size} compressed bytes")
                out.write(block)
    except BundleError:
        raise
    except _CORRUPT as exc:
        raise BundleError("not_a_zip", f"{bundle}: {info.filename!r} is corrupt: {exc}") from exc
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise BundleError("no_space", f"{bundle}: disk full extracting {info.filename!r} into {target.parent}") from None
        if exc.errno == errno.EINVAL:
            raise BundleError("not_a_zip", f"{bundle}: {info.filename!r} is corrupt: {exc}") from exc
        raise
    return copied


def _check_space(bundle: str, plan: list[tuple[zipfile.ZipInfo, str]], dest: Path) -> None:
    """The declared sizes must fit before a byte is written (a full store hurts serving)."""
    declared = sum(info.file_size for info, _ in plan)
    free = shutil.disk_usage(dest).free
    if declared > free:
        raise BundleError("no_space", f"{bundle} unpacks to {declared} bytes, only {free} bytes free in {dest}")


def unpack_bundle(zip_path: Path, dest: Path, limits: UnpackLimits = UnpackLimits()) -> list[Path]:
    """Extract the bundle's files flat into ``dest`` (existing, empty); returns them in archive order.

    Raises ``BundleError``; ``dest`` is empty again afterwards.
    """
    if not dest.is_dir() or any(dest.iterdir()):
        raise ValueError(f"unpack destination {dest} must be an existing, empty directory")
    bundle = zip_path.name
    try:
        archive = zipfile.ZipFile(zip_path)
    except _CORRUPT as exc:
        raise BundleError("not_a_zip", f"{bundle} is not a ZIP archive: {exc}") from exc
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        raise BundleError("not_a_zip", f"{bundle} is not a ZIP archive: {exc}") from exc
    written: list[Path] = []
    with archive:
        plan = _plan(bundle, archive, limits)
        _check_space(bundle, plan, dest)
        budget = limits.max_total_bytes
        try:
            for info, name in plan:
                written.append(dest / name)
                budget -= _copy(bundle, archive, info, dest / name, budget, limits)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
    return written
