"""The delta engine on real bundle bytes: exact round trips, small fine-tune patches, hard refusals.

Patches are built at level 12 here (under a second for the 20 MB bundle, ~5% larger than level 19);
ops/bench/delta.py measures the levels and bsdiff4.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import zstandard

from service.commands.bundle import write_zip
from service.update.delta import DeltaError, apply_patch, build_patch
from tests.support.finetune import perturb
from tests.support.paths import DEFAULT_MODEL, PROJECT_ROOT

FAST_LEVEL = 12


def default_entries(model: Path = DEFAULT_MODEL / "model.onnx", labels: Path = DEFAULT_MODEL / "labels.txt"):
    return [("model.onnx", model), ("labels.txt", labels), ("twinfer.json", DEFAULT_MODEL / "twinfer.json")]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """The demo bundle, the same bundle after a head-only fine-tune, and the patch between them."""
    work = tmp_path_factory.mktemp("delta")
    perturb(DEFAULT_MODEL / "model.onnx", work / "tuned.onnx", head_only=True)
    paths = {"base": work / "base.zip", "new": work / "new.zip", "patch": work / "head.zst"}
    write_zip(paths["base"], default_entries())
    write_zip(paths["new"], default_entries(model=work / "tuned.onnx"))
    build_patch(paths["base"], paths["new"], paths["patch"], level=FAST_LEVEL)
    return paths


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_head_only_fine_tune_patch_is_small_and_applies_exactly(bundles, tmp_path):
    new_size = bundles["new"].stat().st_size
    assert bundles["patch"].stat().st_size < 0.15 * new_size
    out = tmp_path / "result.zip"
    assert apply_patch(bundles["base"], bundles["patch"], out, max_output_bytes=new_size) == new_size
    assert sha256(out) == sha256(bundles["new"])


def test_labels_only_change_patch_is_tiny(bundles, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text((DEFAULT_MODEL / "labels.txt").read_text().replace("Coffee cup", "Mug"))
    new = tmp_path / "labels.zip"
    write_zip(new, default_entries(labels=labels))
    info = build_patch(bundles["base"], new, tmp_path / "labels.zst", level=FAST_LEVEL)
    assert (info.engine, info.base_size, info.new_size) == ("zstd", bundles["base"].stat().st_size, new.stat().st_size)
    assert info.patch_size == (tmp_path / "labels.zst").stat().st_size < 0.002 * info.new_size  # level 19: ~2 KB
    apply_patch(bundles["base"], tmp_path / "labels.zst", tmp_path / "out.zip", max_output_bytes=info.new_size)
    assert sha256(tmp_path / "out.zip") == sha256(new)


def test_empty_base_makes_a_plain_zstd_frame_of_the_new_bundle(tmp_path):
    empty, new = tmp_path / "empty", tmp_path / "new.bin"
    empty.write_bytes(b"")
    new.write_bytes((DEFAULT_MODEL / "labels.txt").read_bytes() * 50)
    build_patch(empty, new, tmp_path / "p.zst", level=FAST_LEVEL)
    assert zstandard.ZstdDecompressor().decompress((tmp_path / "p.zst").read_bytes()) == new.read_bytes()
    apply_patch(empty, tmp_path / "p.zst", tmp_path / "out", max_output_bytes=10**6)
    assert (tmp_path / "out").read_bytes() == new.read_bytes()


def damaged(patch: bytes, how: str) -> bytes:
    middle = len(patch) // 2
    return {
        "flipped byte": patch[:middle] + bytes([patch[middle] ^ 0xFF]) + patch[middle + 1:],
        "truncated in the checksum": patch[:-2],
        "truncated in a block": patch[:middle],
        "trailing data": patch + b"\0" * 8,
        "two frames": patch + patch,
        "not zstd": b"BSDIFF40" + patch[8:],
        "empty": b"",
    }[how]


@pytest.mark.parametrize("how", ["flipped byte", "truncated in the checksum", "truncated in a block",
                                 "trailing data", "two frames", "not zstd", "empty"])
def test_a_damaged_patch_is_corrupt_patch_and_leaves_no_output(bundles, tmp_path, how):
    patch = tmp_path / "bad.zst"
    patch.write_bytes(damaged(bundles["patch"].read_bytes(), how))
    out = tmp_path / "result.zip"
    with pytest.raises(DeltaError) as caught:
        apply_patch(bundles["base"], patch, out, max_output_bytes=bundles["new"].stat().st_size)
    assert caught.value.reason == "corrupt_patch", caught.value
    assert not out.exists()


def test_a_different_base_fails_the_frame_checksum(bundles, tmp_path):
    """A base with one byte in every 64 KiB changed: the patch copies some of them, the checksum fails.

    (A base that differs only where the patch reads nothing gives the exact new bundle.)
    """
    data = bytearray(bundles["base"].read_bytes())
    for offset in range(0, len(data), 64 * 1024):
        data[offset] ^= 0xFF
    wrong = tmp_path / "wrong-base.zip"
    wrong.write_bytes(bytes(data))
    with pytest.raises(DeltaError) as caught:
        apply_patch(wrong, bundles["patch"], tmp_path / "result.zip", max_output_bytes=10**9)
    assert caught.value.reason == "corrupt_patch"
    assert "checksum" in str(caught.value)


def test_declared_size_over_the_limit_is_refused_before_writing(bundles, tmp_path):
    out = tmp_path / "result.zip"
    with pytest.raises(DeltaError) as caught:
        apply_patch(bundles["base"], bundles["patch"], out, max_output_bytes=bundles["new"].stat().st_size - 1)
    assert caught.value.reason == "too_large" and "declares" in str(caught.value)
    assert not out.exists()


def test_output_is_counted_when_the_frame_declares_no_size(tmp_path):
    """A frame without a content size (streamed by another tool), with a small window: counted as written."""
    base = tmp_path / "base"
    base.write_bytes(b"base")
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=10, write_content_size=0)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    patch = tmp_path / "unsized.zst"
    patch.write_bytes(compressor.compress(b"x" * 100_000) + compressor.flush())
    assert zstandard.get_frame_parameters(patch.read_bytes()).content_size == zstandard.CONTENTSIZE_UNKNOWN
    with pytest.raises(DeltaError) as caught:
        apply_patch(base, patch, tmp_path / "out", max_output_bytes=50_000)
    assert caught.value.reason == "too_large" and "exceeds" in str(caught.value)
    assert not (tmp_path / "out").exists()
    assert apply_patch(base, patch, tmp_path / "out", max_output_bytes=100_000) == 100_000


def test_unknown_engine_and_oversized_base_are_refused(bundles, tmp_path):
    limit = bundles["new"].stat().st_size
    with pytest.raises(DeltaError) as engine:
        apply_patch(bundles["base"], bundles["patch"], tmp_path / "o", max_output_bytes=limit, engine="bsdiff4")
    with pytest.raises(DeltaError) as base:
        apply_patch(bundles["base"], bundles["patch"], tmp_path / "o", max_output_bytes=limit,
                    max_base_bytes=bundles["base"].stat().st_size - 1)
    assert (engine.value.reason, base.value.reason) == ("unsupported_engine", "base_too_large")


WRITE_CAPPED = """
import resource, signal, sys
from pathlib import Path
from service.update.delta import DeltaError, apply_patch
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    apply_patch(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), max_output_bytes=1 << 30)
except OSError as exc:
    print(type(exc).__name__, exc.errno, Path(sys.argv[3]).exists())
"""


@pytest.mark.processes
def test_a_write_failure_propagates_as_oserror(bundles, tmp_path):
    """A full disk stands in as a 1 MiB file-size limit: EFBIG, like ENOSPC, is the caller's OSError."""
    done = subprocess.run([sys.executable, "-c", WRITE_CAPPED, str(bundles["base"]), str(bundles["patch"]),
                           str(tmp_path / "result.zip")], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["OSError", "27", "False"]  # EFBIG; the partial result removed


def test_bundles_are_deterministic_with_models_stored_and_text_deflated(bundles, tmp_path):
    again = tmp_path / "again.zip"
    write_zip(again, default_entries())
    assert again.read_bytes() == bundles["base"].read_bytes()
    with zipfile.ZipFile(again) as archive:
        kinds = {info.filename: info.compress_type for info in archive.infolist()}
        assert archive.read("model.onnx") == (DEFAULT_MODEL / "model.onnx").read_bytes()
    assert kinds == {"model.onnx": zipfile.ZIP_STORED, "labels.txt": zipfile.ZIP_DEFLATED,
                     "twinfer.json": zipfile.ZIP_DEFLATED}
