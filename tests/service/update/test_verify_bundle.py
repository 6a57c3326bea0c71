"""Checksums of downloaded bundles, and unpacking of hostile ZIPs into the staging area."""
from __future__ import annotations

import base64
import copy
import hashlib
import random
import stat
import struct
import zipfile
from pathlib import Path

import pytest

from service.update.bundle import BundleError, UnpackLimits, unpack_bundle
from service.update.verify import VerifyError, file_digests, normalize_md5, verify_file

MiB = 1024 * 1024
MODEL = random.Random(7).randbytes(300_000)  # incompressible, like real weights
LABELS = b"background\nperson\ncar\n"


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, bytes]:
    data = random.Random(1).randbytes(3 * MiB + 5)  # several 1 MiB blocks and a tail
    path = tmp_path / "bundle.zip.part"
    path.write_bytes(data)
    return path, data


def test_file_digests_are_sha256_and_md5_in_hex(blob):
    path, data = blob
    assert file_digests(path) == (hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())


def test_verify_by_sha256_in_any_case_returns_both_digests(blob):
    path, data = blob
    expected = (hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())
    assert verify_file(path, expected[0].upper(), None) == expected
    assert verify_file(path, None, None) == expected  # nothing to check against: just the digests


@pytest.mark.parametrize("form", ["hex", "HEX", "base64"])
def test_verify_by_md5_hex_or_blob_storage_base64(blob, form):
    path, data = blob
    digest = hashlib.md5(data)
    value = {"hex": digest.hexdigest(), "HEX": digest.hexdigest().upper(),
             "base64": base64.b64encode(digest.digest()).decode()}[form]
    assert verify_file(path, None, value)[1] == digest.hexdigest()


def test_sha256_is_checked_in_preference_to_md5(blob):
    path, data = blob
    verify_file(path, hashlib.sha256(data).hexdigest(), "0" * 32)  # the MD5 is not consulted


def test_sha256_mismatch_names_the_digest_and_both_values(blob):
    path, data = blob
    wrong = hashlib.sha256(b"another bundle").hexdigest()
    with pytest.raises(VerifyError) as failed:
        verify_file(path, wrong, base64.b64encode(hashlib.md5(data).digest()).decode())
    actual = hashlib.sha256(data).hexdigest()
    assert str(failed.value) == f"SHA-256 mismatch for bundle.zip.part: expected {wrong}, got {actual}"
    assert (failed.value.algorithm, failed.value.expected, failed.value.actual) == ("SHA-256", wrong, actual)


def test_md5_mismatch_reports_a_base64_expectation_in_hex(blob):
    path, data = blob
    other = hashlib.md5(b"another bundle")
    with pytest.raises(VerifyError) as failed:
        verify_file(path, None, base64.b64encode(other.digest()).decode())
    assert str(failed.value) == (
        f"MD5 mismatch for bundle.zip.part: expected {other.hexdigest()}, got {hashlib.md5(data).hexdigest()}"
    )


def test_normalize_md5_accepts_hex_and_base64():
    digest = hashlib.md5(b"x")
    assert normalize_md5(digest.hexdigest().upper()) == digest.hexdigest()
    assert normalize_md5(" " + base64.b64encode(digest.digest()).decode() + "\n") == digest.hexdigest()


@pytest.mark.parametrize("value", ["", "abc", "0" * 31, "g" * 32, "!" * 24, "A" * 24, "0" * 64])
def test_normalize_md5_rejects_anything_else(value):
    with pytest.raises(ValueError, match="not an MD5 digest"):
        normalize_md5(value)  # "A" * 24 is base64, but of 18 bytes


def test_a_malformed_expected_sha256_is_a_value_error(blob):
    with pytest.raises(ValueError, match="not a SHA-256 digest"):
        verify_file(blob[0], "abc123", None)


# -- bundles -----------------------------------------------------------------------------


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]],
             compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def set_declared_size(path: Path, name: str, size: int) -> None:
    """Rewrite a member's uncompressed size in its local and central headers (a lying archive)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    struct.pack_into("<I", data, info.header_offset + 22, size)
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        length = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + length] == name.encode():
            struct.pack_into("<I", data, at + 24, size)
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    target = tmp_path / "staging" / "candidate"
    target.mkdir(parents=True)
    return target


def test_a_flat_bundle_unpacks_as_it_is(tmp_path, dest):
    bundle = make_zip(tmp_path / "b.zip", [("model.onnx", MODEL), ("labels.txt", LABELS), ("twinfer.json", b"{}")])
    assert unpack_bundle(bundle, dest) == [dest / "model.onnx", dest / "labels.txt", dest / "twinfer.json"]
    assert (dest / "model.onnx").read_bytes() == MODEL and (dest / "labels.txt").read_bytes() == LABELS


def test_a_single_top_folder_is_flattened_and_mac_junk_ignored(tmp_path, dest):
    bundle = make_zip(tmp_path / "b.zip", [
        ("detector-1.2/", b""),
        ("detector-1.2/model.tflite", MODEL),
        ("detector-1.2/labelmap.txt", LABELS),
        ("detector-1.2/.DS_Store", b"\0\0\0\1Bud1"),
        ("__MACOSX/detector-1.2/._model.tflite", b"\0\5\26\7"),
    ])
    assert unpack_bundle(bundle, dest) == [dest / "model.tflite", dest / "labelmap.txt"]
    assert sorted(p.name for p in dest.iterdir()) == ["labelmap.txt", "model.tflite"]


@pytest.mark.parametrize("names", [
    ["top/model.onnx", "top/sub/labels.txt"],
    ["model.onnx", "sub/labels.txt"],
    ["a/model.onnx", "b/labels.txt"],
])
def test_files_in_subfolders_are_a_layout_error(tmp_path, dest, names):
    bundle = make_zip(tmp_path / "b.zip", [(name, b"x") for name in names])
    with pytest.raises(BundleError, match="subfolder") as failed:
        unpack_bundle(bundle, dest)
    assert failed.value.reason == "layout"
    assert list(dest.iterdir()) == []


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("names", [["labels.txt", "labels.txt"], ["top/Labels.txt", "top/labels.txt"]])
def test_two_files_with_one_name_are_a_layout_error(tmp_path, dest, names):
    bundle = make_zip(tmp_path / "b.zip", [(name, b"x") for name in names])
    with pytest.raises(BundleError, match="more than one file") as failed:
        unpack_bundle(bundle, dest)
    assert failed.value.reason == "layout"


def test_an_empty_bundle_is_a_layout_error(tmp_path, dest):
    with pytest.raises(BundleError, match="no files") as failed:
        unpack_bundle(make_zip(tmp_path / "b.zip", [("top/", b""), ("__MACOSX/x", b"x")]), dest)
    assert failed.value.reason == "layout"


@pytest.mark.parametrize("name", [
    "../evil.txt", "/abs.txt", "a/../../x", "..\\evil.txt", "a\\b.txt", "C:/evil.txt", "c:evil.txt", "a//b", "./x",
])
def test_zip_slip_names_are_refused_before_anything_is_written(tmp_path, dest, name):
    bundle = make_zip(tmp_path / "b.zip", [("labels.txt", LABELS), (name, b"pwned")])
    with pytest.raises(BundleError) as failed:
        unpack_bundle(bundle, dest)
    assert failed.value.reason == "unsafe_path" and repr(name) in str(failed.value)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "staging" / "evil.txt").exists()


def test_a_symlink_member_is_refused(tmp_path, dest):
    link = zipfile.ZipInfo("labels.txt")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    bundle = make_zip(tmp_path / "b.zip", [("model.onnx", MODEL), (link, b"/etc/passwd")])
    with pytest.raises(BundleError, match="symbolic link") as failed:
        unpack_bundle(bundle, dest)
    assert failed.value.reason == "symlink"
    assert list(dest.iterdir()) == []


def test_too_many_files_counts_neither_folders_nor_junk(tmp_path, dest):
    entries = [("top/", b""), ("top/.DS_Store", b"x"), ("__MACOSX/top/._a", b"x")]
    bundle = make_zip(tmp_path / "ok.zip", entries + [(f"top/{i}.txt", b"x") for i in range(3)])
    assert len(unpack_bundle(bundle, dest, UnpackLimits(max_files=3))) == 3
    too_many = make_zip(tmp_path / "many.zip", [(f"{i}.txt", b"x") for i in range(17)])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match="17 files, at most 16") as failed:
        unpack_bundle(too_many, empty)
    assert failed.value.reason == "too_many_files"
    assert list(empty.iterdir()) == []


def test_a_declared_total_over_the_limit_is_refused_before_extracting(tmp_path, dest):
    bundle = make_zip(tmp_path / "b.zip", [("model.onnx", MODEL), ("labels.txt", LABELS)])
    with pytest.raises(BundleError, match=f"declares {len(MODEL) + len(LABELS)} bytes") as failed:
        unpack_bundle(bundle, dest, UnpackLimits(max_total_bytes=len(MODEL)))
    assert failed.value.reason == "too_large"
    assert list(dest.iterdir()) == []


def test_a_zip_bomb_member_is_refused_by_its_ratio(tmp_path, dest):
    bundle = make_zip(tmp_path / "b.zip", [("labels.txt", LABELS), ("model.onnx", bytes(50 * MiB))])
    assert bundle.stat().st_size < MiB
    with pytest.raises(BundleError, match="more than 200 times") as failed:
        unpack_bundle(bundle, dest)
    assert failed.value.reason == "bomb"
    assert list(dest.iterdir()) == []


def test_a_size_that_lies_is_caught_by_the_crc_and_nothing_is_left(tmp_path, dest):
    bundle = make_zip(tmp_path / "b.zip", [("labels.txt", LABELS), ("model.onnx", MODEL)])
    set_declared_size(bundle, "model.onnx", 1000)  # passes every declared limit
    with pytest.raises(BundleError, match="corrupt") as failed:
        unpack_bundle(bundle, dest, UnpackLimits(max_total_bytes=100_000))
    assert failed.value.reason == "not_a_zip"
    assert list(dest.iterdir()) == []  # labels.txt was written, then removed


def trust_the_stream(monkeypatch, name: str, real_size: int) -> None:
    """zipfile stops at the declared size; make it read on, as a reader trusting the stream would."""
    real_open = zipfile.ZipFile.open

    def open_member(self, member, mode="r", pwd=None, **kwargs):
        info = copy.copy(member if isinstance(member, zipfile.ZipInfo) else self.getinfo(member))
        if info.filename == name:
            info.file_size = real_size
        return real_open(self, info, mode, pwd, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", open_member)


def test_real_bytes_are_counted_against_the_total_while_extracting(tmp_path, dest, monkeypatch):
    bundle = make_zip(tmp_path / "b.zip", [("labels.txt", LABELS), ("model.onnx", MODEL)])
    set_declared_size(bundle, "model.onnx", 1000)
    trust_the_stream(monkeypatch, "model.onnx", len(MODEL))
    with pytest.raises(BundleError, match="went past 100000 bytes") as failed:
        unpack_bundle(bundle, dest, UnpackLimits(max_total_bytes=100_000))
    assert failed.value.reason == "too_large"
    assert list(dest.iterdir()) == []


def test_real_bytes_are_counted_against_the_ratio_while_extracting(tmp_path, dest, monkeypatch):
    bundle = make_zip(tmp_path / "b.zip", [("model.onnx", bytes(4 * MiB))])
    set_declared_size(bundle, "model.onnx", 1000)
    trust_the_stream(monkeypatch, "model.onnx", 4 * MiB)
    with pytest.raises(BundleError, match="expanded past 200 times") as failed:
        unpack_bundle(bundle, dest)
    assert failed.value.reason == "bomb"
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"not a zip at all" * 100, "truncated"])
def test_not_a_zip(tmp_path, dest, content):
    path = tmp_path / "b.zip"
    if content == "truncated":
        full = make_zip(tmp_path / "full.zip", [("model.onnx", MODEL)]).read_bytes()
        content = full[: len(full) // 2]
    path.write_bytes(content)
    with pytest.raises(BundleError) as failed:
        unpack_bundle(path, dest)
    assert failed.value.reason == "not_a_zip" and "b.zip" in str(failed.value)


def test_unsupported_compression_is_refused(tmp_path, dest):
    bundle = make_zip(tmp_path / "b.zip", [("model.onnx", MODEL)], compression=zipfile.ZIP_BZIP2)
    with pytest.raises(BundleError, match="compression method 12") as failed:
        unpack_bundle(bundle, dest)
    assert failed.value.reason == "not_a_zip"


def test_dest_must_exist_and_be_empty(tmp_path, dest):
    bundle = make_zip(tmp_path / "b.zip", [("model.onnx", MODEL)])
    (dest / "left-over").write_bytes(b"x")
    with pytest.raises(ValueError, match="empty directory"):
        unpack_bundle(bundle, dest)
    with pytest.raises(ValueError, match="empty directory"):
        unpack_bundle(bundle, tmp_path / "missing")
