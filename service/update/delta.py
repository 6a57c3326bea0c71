"""Binary deltas between model bundles: a patch turns the exact bytes of a base bundle into a new one.

Engine: zstd with the whole base bundle as a raw-content dictionary and a window covering base + new
(``zstd --patch-from`` semantics). A patch is one plain zstd frame declaring the new bundle's size,
with a checksum, so ``zstd -d --patch-from=BASE PATCH`` applies it too (and the CLI's patches apply
here). Chosen over bsdiff4 by measurement (``ops/bench/delta.py``): for a head-only fine-tune of the
20 MB demo bundle zstd's patch is 7.5% of the bundle, bsdiff4's 5.2%, but only zstd applies as a
stream, checks its result (frame checksum: a wrong base or a damaged patch fails here), applies 3-6x
faster, and is the smaller one when every weight changed (retrain: 87% vs 91% of the bundle).

Device memory: python-zstandard copies the base into the dictionary, and the decoder keeps a window
as large as the result (matches reach back into the base, so the window may not wrap): apply needs
about base + new bytes of heap (+39 MiB for the 20 MB demo bundle), plus the base's pages in the
page cache while the dictionary is copied. Bundles only diff well with the model file stored, not
deflated (``service.commands.bundle.write_zip``).
"""
from __future__ import annotations

import mmap
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import zstandard

ENGINES = ("zstd",)  # what the device can apply
DEFAULT_LEVEL = 19  # operator side: ~20 s for a 20 MB bundle; level 12 takes <1 s for a ~5% larger patch
_HEADER_MAX = 18  # ZSTD_FRAMEHEADERSIZE_MAX: enough to read the declared content size and window
# Patch bytes per decompress call. A 4-byte zstd block can expand to 128 KiB (RLE), so one call yields
# at most 2 MiB even from a hostile patch (the limit is checked after each); a 17 MB patch applies in ~0.25 s.
_INPUT_CHUNK = 64


class DeltaError(Exception):
    """A patch that cannot be built or applied; ``reason`` is a stable key for reports."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # corrupt_patch | too_large | unsupported_engine | base_too_large


@dataclass(frozen=True)
class PatchInfo:
    engine: str
    base_size: int
    new_size: int
    patch_size: int
    seconds: float


def window_log(base_size: int, new_size: int) -> int:
    """Smallest window covering base + new, as ``zstd --patch-from``: every base byte stays reachable."""
    return max(zstandard.WINDOWLOG_MIN, (base_size + new_size).bit_length())


@contextmanager
def _mapped(path: Path) -> Iterator[bytes | mmap.mmap]:
    """The file's bytes without reading them into the heap (page cache, dropped when closed)."""
    with open(path, "rb") as handle:
        if handle.seek(0, 2) == 0:  # mmap refuses empty files; an empty base means "no base"
            yield b""
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            yield view


def _dictionary(base: Path | None) -> zstandard.ZstdCompressionDict | None:
    """The base as a raw-content dictionary; the C backend copies it, so the mapping is closed at once.
    No base: no dictionary (a plain compressed frame)."""
    if base is None:
        return None
    with _mapped(base) as view:
        return zstandard.ZstdCompressionDict(view, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def build_patch(base: Path | None, new: Path, out: Path, *, level: int = DEFAULT_LEVEL) -> PatchInfo:
    """Write the patch turning ``base`` into ``new`` (operator side: ~20 s and ~250 MiB at level 19 for 20 MB).
    ``base`` None: ``new`` compressed on its own (``compress_bundle``)."""
    base_size, new_size = (base.stat().st_size if base is not None else 0), new.stat().st_size
    log = window_log(base_size, new_size)
    if log > zstandard.WINDOWLOG_MAX:
        raise DeltaError("base_too_large", f"base + new ({base_size + new_size} bytes) exceed zstd's largest window")
    # Base matches come from the level's match finder (levels >= 10 index a 20 MB base well enough);
    # LDM only adds long repeats inside the new bundle: the dictionary is loaded without LDM indexing.
    params = zstandard.ZstdCompressionParameters.from_level(
        level, window_log=log, enable_ldm=True, write_content_size=1, write_checksum=1
    )
    started = time.perf_counter()
    compressor = zstandard.ZstdCompressor(dict_data=_dictionary(base), compression_params=params)
    try:
        with open(new, "rb") as source, open(out, "wb") as target:
            compressor.copy_stream(source, target, size=new_size)  # size: the frame declares it
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return PatchInfo("zstd", base_size, new_size, out.stat().st_size, time.perf_counter() - started)


def apply_patch(base: Path | None, patch: Path, out: Path, *, max_output_bytes: int, engine: str = "zstd",
                max_base_bytes: int | None = None) -> int:
    """Stream ``patch`` applied to ``base`` into ``out``; returns the bytes written.
    ``base`` None: ``patch`` is a plain compressed frame (``decompress_bundle``).

    No partial ``out`` is left behind on failure. DeltaError reasons: unsupported_engine,
    base_too_large (over ``max_base_bytes``: the base is held in memory), too_large (declared or
    written size, or window, over ``max_output_bytes``), corrupt_patch (damaged, truncated, trailing
    data, or a base whose bytes differ where the patch reads them: the frame checksum fails).
    OSError (ENOSPC) propagates.
    """
    if engine not in ENGINES:
        raise DeltaError("unsupported_engine", f"patch engine {engine!r} is not one of {', '.join(ENGINES)}")
    base_size = base.stat().st_size if base is not None else 0
    if max_base_bytes is not None and base_size > max_base_bytes:
        raise DeltaError("base_too_large", f"base bundle is {base_size} bytes, more than {max_base_bytes}")
    try:
        with open(patch, "rb") as source:
            _check_header(source.read(_HEADER_MAX), max_output_bytes)
            source.seek(0)
            decoder = zstandard.ZstdDecompressor(dict_data=_dictionary(base),
                                                 max_window_size=max(max_output_bytes, 1 << zstandard.WINDOWLOG_MIN))
            with open(out, "wb") as target:
                return _decode(decoder.decompressobj(), source, target, max_output_bytes)
    except zstandard.ZstdError as exc:
        out.unlink(missing_ok=True)
        raise DeltaError("corrupt_patch", f"patch {patch.name} does not apply: {exc}") from None
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def compress_bundle(bundle: Path, out: Path, *, level: int = DEFAULT_LEVEL) -> PatchInfo:
    """A bundle compressed for the wire: stored model files (kept for deltas) cost no more to
    download than deflated ones (demo model: 10.6 MB against 12.0 MB deflated, 19.9 MB stored)."""
    return build_patch(None, bundle, out, level=level)


def decompress_bundle(source: Path, out: Path, *, max_output_bytes: int) -> int:
    """The bundle from ``compress_bundle``'s frame, streamed, with the same limits as a patch."""
    return apply_patch(None, source, out, max_output_bytes=max_output_bytes)


def _check_header(header: bytes, limit: int) -> None:
    """Refuse before decoding: a declared size or a window beyond the limit (ZstdError if not zstd)."""
    params = zstandard.get_frame_parameters(header)
    if params.content_size != zstandard.CONTENTSIZE_UNKNOWN and params.content_size > limit:
        raise DeltaError("too_large", f"the patch declares a {params.content_size}-byte result, limit {limit}")
    if params.window_size > limit:  # only frames without a content size (single-segment ones have window = size)
        raise DeltaError("too_large", f"the patch needs a {params.window_size}-byte window, limit {limit}")


def _decode(decoder: zstandard.ZstdDecompressionObj, source: BinaryIO, target: BinaryIO, limit: int) -> int:
    """Feed small input chunks so output per call stays bounded; require exactly one complete frame."""
    written = 0
    while chunk := source.read(_INPUT_CHUNK):
        if decoder.eof:
            raise DeltaError("corrupt_patch", "data after the end of the patch's zstd frame")
        data = decoder.decompress(chunk)
        written += len(data)
        if written > limit:
            raise DeltaError("too_large", f"the patch's result exceeds {limit} bytes")
        target.write(data)
    if not decoder.eof:
        raise DeltaError("corrupt_patch", "the patch ends inside its zstd frame (truncated)")
    if decoder.unused_data:
        raise DeltaError("corrupt_patch", "data after the end of the patch's zstd frame")
    return written
