"""The Azurite fixture answers like Blob Storage for what the model downloader relies on.

Plain ``requests`` against a real Azurite 3.35 (``make tools`` installs it under .tools/azurite):
SAS reads, ranges, conditional reads after a blob changed, refused SAS tokens and missing blobs.
Where Azurite differs from what one might expect of Blob Storage, the test pins what Azurite
actually answers and says so.
"""
from __future__ import annotations

import base64
import hashlib
import os

import pytest
import requests

from tests.support.azurite import Azurite

pytestmark = pytest.mark.processes  # every test here starts processes

CONTAINER = "models"
TIMEOUT = 10


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    with Azurite.start(tmp_path_factory.mktemp("azurite")) as running:
        yield running


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def test_get_with_valid_sas_returns_the_blob_with_etag_length_and_md5(azurite):
    data = os.urandom(4096)
    etag = azurite.upload(CONTAINER, "bundle-get.tar", data)

    response = requests.get(azurite.sas_url(CONTAINER, "bundle-get.tar"), timeout=TIMEOUT)

    assert response.status_code == 200
    assert response.content == data
    assert response.headers["ETag"] == etag
    assert etag.startswith('"') and etag.endswith('"')
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["Content-MD5"] == _md5_b64(data)
    assert response.headers["Accept-Ranges"] == "bytes"


def test_range_with_matching_if_range_returns_206_and_the_tail(azurite):
    data = os.urandom(4096)
    etag = azurite.upload(CONTAINER, "bundle-range.tar", data)

    response = requests.get(
        azurite.sas_url(CONTAINER, "bundle-range.tar"),
        headers={"Range": "bytes=10-", "If-Range": etag},
        timeout=TIMEOUT,
    )

    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes 10-{len(data) - 1}/{len(data)}"
    assert response.headers["Content-Length"] == str(len(data) - 10)
    assert response.headers["ETag"] == etag
    assert response.content == data[10:]
    # A range read carries no Content-MD5 (that would be the range's), but the whole blob's
    # MD5 is still there as x-ms-blob-content-md5.
    assert "Content-MD5" not in response.headers
    assert response.headers["x-ms-blob-content-md5"] == _md5_b64(data)


def test_if_range_with_a_stale_etag_is_ignored_by_azurite(azurite):
    old = os.urandom(4096)
    old_etag = azurite.upload(CONTAINER, "bundle-replaced.tar", old)
    new = os.urandom(3000)
    new_etag = azurite.replace(CONTAINER, "bundle-replaced.tar", new)
    assert new_etag != old_etag

    response = requests.get(
        azurite.sas_url(CONTAINER, "bundle-replaced.tar"),
        headers={"Range": "bytes=10-", "If-Range": old_etag},
        timeout=TIMEOUT,
    )

    # HTTP (RFC 9110 13.1.5) says a non-matching If-Range means "send the whole thing": 200 with
    # the full new content. Azurite 3.35 does not implement If-Range at all (its Get Blob handler
    # never reads the header), so it answers 206 with bytes 10- of the NEW blob. Blob Storage's
    # own documentation lists only If-Match, If-None-Match, If-Modified-Since and
    # If-Unmodified-Since as supported conditional headers, so a downloader must not rely on
    # If-Range to detect a changed blob: it must compare the 206's ETag with the one it resumes
    # from (or send If-Match, see the next test) or it would splice old and new bytes.
    assert response.status_code == 206
    assert response.headers["ETag"] == new_etag
    assert response.headers["Content-Range"] == f"bytes 10-{len(new) - 1}/{len(new)}"
    assert response.content == new[10:]

    full = requests.get(azurite.sas_url(CONTAINER, "bundle-replaced.tar"), timeout=TIMEOUT)
    assert full.status_code == 200
    assert full.content == new
    assert full.headers["Content-MD5"] == _md5_b64(new)


def test_if_match_with_a_stale_etag_is_refused_with_412(azurite):
    old_etag = azurite.upload(CONTAINER, "bundle-if-match.tar", os.urandom(2048))
    azurite.replace(CONTAINER, "bundle-if-match.tar", os.urandom(2048))
    url = azurite.sas_url(CONTAINER, "bundle-if-match.tar")

    response = requests.get(url, headers={"Range": "bytes=10-", "If-Match": old_etag}, timeout=TIMEOUT)

    assert response.status_code == 412
    assert response.headers["x-ms-error-code"] == "ConditionNotMet"


def test_expired_sas_is_refused_with_403(azurite):
    azurite.upload(CONTAINER, "bundle-expired.tar", b"x" * 100)

    response = requests.get(azurite.expired_sas_url(CONTAINER, "bundle-expired.tar"), timeout=TIMEOUT)

    assert response.status_code == 403
    assert response.headers["x-ms-error-code"] == "AuthorizationFailure"


def test_tampered_sas_is_refused_with_403(azurite):
    azurite.upload(CONTAINER, "bundle-tampered.tar", b"x" * 100)
    good = azurite.sas_url(CONTAINER, "bundle-tampered.tar")
    tampered = azurite.tampered_sas_url(CONTAINER, "bundle-tampered.tar")
    assert requests.get(good, timeout=TIMEOUT).status_code == 200

    response = requests.get(tampered, timeout=TIMEOUT)

    assert response.status_code == 403
    assert response.headers["x-ms-error-code"] == "AuthorizationFailure"


def test_missing_blob_is_404(azurite):
    azurite.upload(CONTAINER, "bundle-present.tar", b"x")

    response = requests.get(azurite.sas_url(CONTAINER, "bundle-absent.tar"), timeout=TIMEOUT)

    assert response.status_code == 404
    assert response.headers["x-ms-error-code"] == "BlobNotFound"


def test_range_starting_exactly_at_the_end(azurite):
    data = os.urandom(1000)
    etag = azurite.upload(CONTAINER, "bundle-end.tar", data)
    url = azurite.sas_url(CONTAINER, "bundle-end.tar")

    response = requests.get(url, headers={"Range": f"bytes={len(data)}-", "If-Range": etag}, timeout=TIMEOUT)

    # Observed with Azurite 3.35: 206 with an empty body, Content-Length 0 and the ill-formed
    # Content-Range "bytes 1000-999/1000" (last byte before first byte). RFC 9110 would call this
    # range unsatisfiable (416); whether real Blob Storage answers 206 or 416 here was not
    # verified against Azure. A downloader resuming an already complete file must therefore accept
    # both, and should not parse this Content-Range as a normal one.
    assert response.status_code == 206
    assert response.headers["Content-Length"] == "0"
    assert response.headers["Content-Range"] == f"bytes {len(data)}-{len(data) - 1}/{len(data)}"
    assert response.headers["ETag"] == etag
    assert response.content == b""

    # One byte further, Azurite does answer 416 InvalidRange, with Content-Range "bytes */1000".
    past = requests.get(url, headers={"Range": f"bytes={len(data) + 1}-"}, timeout=TIMEOUT)
    assert past.status_code == 416
    assert past.headers["x-ms-error-code"] == "InvalidRange"
    assert past.headers["Content-Range"] == f"bytes */{len(data)}"


def test_connection_string_works_with_the_sdk(azurite):
    from azure.storage.blob import BlobServiceClient

    azurite.upload(CONTAINER, "bundle-sdk.tar", b"sdk")
    with BlobServiceClient.from_connection_string(azurite.connection_string) as client:
        blob = client.get_blob_client(CONTAINER, "bundle-sdk.tar")
        assert blob.download_blob().readall() == b"sdk"
    assert azurite.account_url.endswith("/devstoreaccount1")


def test_start_waits_for_the_port_and_exit_reaps_the_process(tmp_path):
    with Azurite.start(tmp_path) as running:
        proc = running.proc
        assert proc.poll() is None
        assert running.startup_seconds < 30
        assert requests.get(running.sas_url(CONTAINER, "nothing"), timeout=TIMEOUT).status_code == 404
    assert proc.returncode is not None
