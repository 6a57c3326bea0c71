"""Desired-properties parsing: the reference keys, our model object, and refusals."""
from __future__ import annotations

import base64
import hashlib

import pytest

from service.update.desired import DesiredError, merge_patch, parse_desired

DATA = b"bundle bytes"
MD5_HEX = hashlib.md5(DATA).hexdigest()
MD5_B64 = base64.b64encode(hashlib.md5(DATA).digest()).decode()
SHA = hashlib.sha256(DATA).hexdigest()
URL = "https://acct.blob.core.windows.net/models/ssd_2.1.zip?sv=2024&sig=SECRET"


@pytest.mark.parametrize("md5", [MD5_HEX, MD5_B64, MD5_HEX.upper()])
def test_reference_design_keys_with_hex_or_base64_md5(md5):
    state = parse_desired({"FileName": "tiny-yolov3-11_1.0.zip", "DownloadUrl": URL, "ContentMD5": md5, "$version": 7})
    assert state.version == 7
    model = state.model
    assert (model.name, model.version, model.file_name) == ("tiny-yolov3-11", "1.0", "tiny-yolov3-11_1.0.zip")
    assert model.md5 == MD5_HEX and model.sha256 is None and model.url == URL


def test_reference_file_name_without_version_is_named_by_its_md5():
    model = parse_desired({"FileName": "detector.zip", "DownloadUrl": URL, "ContentMD5": MD5_B64}).model
    assert (model.name, model.version) == ("detector", MD5_HEX[:12])


def test_rich_model_object_wins_and_carries_settings():
    state = parse_desired(
        {
            "FileName": "old_1.0.zip", "DownloadUrl": URL,
            "model": {"name": "ssd", "version": "2.1", "url": URL, "sha256": SHA.upper(), "size": 12},
            "inference": {"score_threshold": 0.4},
            "download": {"max_bytes_per_second": 32768},
        }
    )
    assert (state.model.name, state.model.version, state.model.sha256) == ("ssd", "2.1", SHA)
    assert state.model.file_name == "ssd_2.1.zip"
    assert state.score_threshold == 0.4 and state.max_bytes_per_second == 32768


DELTA = {"base_version": "1.0", "base_sha256": SHA, "url": URL.replace(".zip", ".zst"), "sha256": SHA, "size": 5}


def test_delta_urgent_windows_and_range_size_are_carried():
    state = parse_desired(
        {
            "model": {"name": "ssd", "version": "2.1", "url": URL, "sha256": SHA, "urgent": True, "delta": DELTA},
            "download": {"windows": ["01:00-05:00@4096", {"start": "22:00", "end": "23:00"}], "range_bytes": 0},
        }
    )
    delta = state.model.delta
    assert (delta.base_version, delta.base_sha256, delta.size, delta.engine) == ("1.0", SHA, 5, "zstd")
    assert state.model.urgent and state.range_bytes == 0
    assert [w.describe() for w in state.windows] == ["01:00-05:00@4096", "22:00-23:00"]
    plain = parse_desired({"model": {"name": "ssd", "version": "2.1", "url": URL, "sha256": SHA}})
    assert plain.model.delta is None and not plain.model.urgent
    assert plain.windows is None and plain.range_bytes is None  # the device's own settings apply
    assert parse_desired({"download": {"windows": []}}).windows == ()  # the twin says: any time


def test_no_model_is_not_an_error():
    state = parse_desired({"$version": 3, "someOtherSetting": True})
    assert state.model is None and state.version == 3


@pytest.mark.parametrize(
    "document",
    [
        {"model": {"name": "ssd", "version": "1", "url": URL}},  # nothing to verify with
        {"model": {"name": "ssd", "version": "1", "url": "ftp://x/y.zip", "sha256": SHA}},
        {"model": {"name": "../etc", "version": "1", "url": URL, "sha256": SHA}},
        {"model": {"name": "ssd", "version": "1/2", "url": URL, "sha256": SHA}},
        {"model": {"name": "ssd", "version": "1", "url": URL, "sha256": "abc"}},
        {"model": {"name": "ssd", "version": "1", "url": URL, "sha256": SHA, "size": -1}},
        {"model": {"name": "ssd", "version": "1", "url": URL, "sha256": SHA, "colour": "red"}},
        {"model": "ssd"},
        {"FileName": "../x_1.zip", "DownloadUrl": URL, "ContentMD5": MD5_HEX},
        {"FileName": "x_1.zip", "DownloadUrl": URL, "ContentMD5": "not-a-digest"},
        {"FileName": "x.zip", "DownloadUrl": URL},
        {"inference": {"score_threshold": 1.5}},
        {"download": {"max_bytes_per_second": 10}},
        {"big": "x" * 5000},
        {f"k{i}": "x" * 3000 for i in range(12)},
        {"$invalid": "Expecting value: line 1 column 1"},
        {"model": {"name": "ssd", "version": "2", "url": URL, "md5": MD5_HEX, "delta": DELTA}},  # no result sha256
        {"model": {"name": "ssd", "version": "2", "url": URL, "sha256": SHA, "delta": {**DELTA, "base_sha256": "x"}}},
        {"model": {"name": "ssd", "version": "2", "url": URL, "sha256": SHA, "delta": {**DELTA, "url": "file:/x"}}},
        {"model": {"name": "ssd", "version": "2", "url": URL, "sha256": SHA, "delta": {**DELTA, "extra": 1}}},
        {"model": {"name": "ssd", "version": "2", "url": URL, "sha256": SHA, "urgent": "yes"}},
        {"download": {"windows": "01:00-05:00"}},
        {"download": {"windows": ["25:00-05:00"]}},
        {"download": {"range_bytes": 1000}},
        {"download": {"speed": 1}},
        {"model": {"name": "ssd", "version": "2", "url": URL, "sha256": SHA, "compression": "gzip"}},
    ],
)
def test_malformed_documents_are_refused_with_a_reason(document):
    with pytest.raises(DesiredError) as info:
        parse_desired(document)
    assert str(info.value)


def test_merge_patch_follows_iot_hub_semantics():
    document = {"model": {"name": "a", "version": "1", "url": URL}, "inference": {"score_threshold": 0.3}, "$version": 1}
    patched = merge_patch(document, {"model": {"version": "2"}, "inference": None, "$version": 2})
    assert patched == {"model": {"name": "a", "version": "2", "url": URL}, "$version": 2}
