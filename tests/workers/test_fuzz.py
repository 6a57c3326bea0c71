"""Property-based fuzzing (hypothesis) of the three parsers that take bytes from outside:

* ``POST /detect`` on a real gunicorn pool (2 workers): random bytes, real pictures cut
  short or with flipped bytes, headers declaring huge sizes, random content types and
  multipart bodies. Over 10,000 requests: no 5xx, every answer JSON (detections, or an
  error with a reason), no worker crashed or timed out, worker memory bounded;
* the desired-properties parser: it returns or raises ``DesiredError``, nothing else;
* the bundle unpacker: it unpacks inside ``dest`` or raises ``BundleError``, nothing
  else, and never writes a file anywhere but ``dest``.

Runs are reproducible: ``derandomize=True`` (examples derived from each test's name) and
no example database.
"""
from __future__ import annotations

import io
import json
import operator
import os
import random
import re
import shutil
import struct
import tempfile
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from service.update.bundle import BundleError, UnpackLimits, unpack_bundle
from service.update.desired import DesiredError, DesiredState, merge_patch, parse_desired
from tests.support.fuzzing import fuzz
from tests.support.images import encoded, jpeg_with_declared_size, png_declaring
from tests.support.paths import IMAGES
from tests.support.service_process import ServiceProcess

# === POST /detect on a real pool ===============================================================

MAX_BODY = 4 * 1024 * 1024
REQUESTS = Counter()  # per strategy: how many requests went out
STATUSES = Counter()
REASONS = Counter()
MIN_REQUESTS = 10_000
# Real pictures (decoded and run through the model when they survive the mutation) and
# small synthetic ones in all four formats (cheaper to decode).
PICTURES = [p.read_bytes() for p in sorted(IMAGES.glob("*.*g"))] + [
    encoded(ext, w, h, seed=i) for i, (ext, w, h) in enumerate(
        [(".jpg", 64, 48), (".png", 80, 60), (".bmp", 40, 30), (".webp", 96, 64), (".jpg", 320, 240), (".png", 33, 17)]
    )
]
SMALL = PICTURES[-6:]
IMAGE_TYPES = ["image/jpeg", "image/png", "image/bmp", "image/webp", "image/gif", "application/octet-stream", "image/x-anything"]


def _worker_pids(service: ServiceProcess) -> set[int]:
    text = requests.get(service.url + "/metrics", timeout=10).text
    return {int(p) for p in re.findall(r'^twinfer_worker_model_info\{[^}]*pid="(\d+)"[^}]*\} 1\.0$', text, re.M)}


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """The real service, warmed up: every worker has decoded and run full pictures."""
    store = tmp_path_factory.mktemp("fuzz") / "store"
    with ServiceProcess.start(store, workers=2, extra_env={"TWINFER_MAX_BODY_BYTES": str(MAX_BODY)}) as service:
        session = requests.Session()
        session.headers["Connection"] = "close"  # no keep-alive: every request a fresh connection
        for _ in range(6):
            for picture in PICTURES:
                assert session.post(service.url + "/detect", data=picture, timeout=30).status_code == 200
        pids = _worker_pids(service)
        assert len(pids) == 2, pids
        baseline = {pid: _rss_bytes(pid) for pid in pids}
        yield service, session, baseline


def _send(pool, strategy: str, body: bytes, headers: dict[str, str] | None = None, query: str = "") -> requests.Response:
    service, session, _ = pool
    answer = session.post(f"{service.url}/detect{query}", data=body, headers=headers or {}, timeout=60)
    REQUESTS[strategy] += 1
    STATUSES[answer.status_code] += 1
    assert answer.status_code < 500, (answer.status_code, answer.text[:300], headers, body[:64])
    try:
        document = answer.json()
    except ValueError:
        raise AssertionError(f"not JSON: {answer.status_code} {answer.headers} {answer.text[:300]!r}") from None
    if answer.status_code == 200:
        assert isinstance(document.get("detections"), list) and document["model"]["version"], document
    else:
        assert 400 <= answer.status_code < 500, answer.status_code
        assert isinstance(document.get("error"), str) and isinstance(document.get("reason"), str), document
        REASONS[document["reason"]] += 1
    return answer


queries = st.one_of(
    st.just(""),
    st.just(""),
    st.builds(lambda t: f"?threshold={t}", st.one_of(st.floats(-2, 2).map(str), st.text("0123456789.-eE", max_size=8))),
    st.builds(lambda m: f"?max_detections={m}", st.one_of(st.integers(-5, 2000).map(str), st.text("0123456789+- ", max_size=6))),
)


@pytest.mark.processes
@fuzz(3600)
@given(body=st.binary(max_size=3000), content_type=st.sampled_from(IMAGE_TYPES), query=queries)
def test_detect_random_bytes(pool, body, content_type, query):
    _send(pool, "random_bytes", body, {"Content-Type": content_type}, query)


@st.composite
def damaged_pictures(draw) -> bytes:
    picture = draw(st.sampled_from(PICTURES))
    data = bytearray(picture)
    how = draw(st.sampled_from(["truncate", "flip", "both"]))
    if how in ("flip", "both"):
        # Mostly near the start, where headers and tables live; some anywhere.
        for _ in range(draw(st.integers(1, 12))):
            limit = draw(st.sampled_from([64, 1024, len(data)]))
            data[draw(st.integers(0, min(limit, len(data)) - 1))] = draw(st.integers(0, 255))
    if how in ("truncate", "both"):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@pytest.mark.processes
@fuzz(1300)
@given(body=damaged_pictures(), content_type=st.sampled_from(IMAGE_TYPES[:4] + ["application/octet-stream"]))
def test_detect_truncated_and_corrupted_pictures(pool, body, content_type):
    _send(pool, "damaged_pictures", body, {"Content-Type": content_type})


def _bmp_declaring(width: int, height: int, bits: int) -> bytes:
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(header) + 64, 0, 0, 14 + len(header)) + header + bytes(64)


def _webp_declaring(width: int, height: int) -> bytes:
    """An extended-format (VP8X) WebP header: canvas width/height - 1 in 24 bits each."""
    vp8x = bytes([0, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


dimensions = st.one_of(st.integers(0, 64), st.integers(0, 20_000), st.integers(0, 2**31 - 1))
JPEGS = [p for p in PICTURES if p[:2] == b"\xff\xd8"]


@st.composite
def huge_headers(draw) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["png", "jpeg", "bmp", "webp"]))
    width, height = draw(dimensions), draw(dimensions)
    if kind == "png":
        return png_declaring(width, height), "image/png"
    if kind == "jpeg":
        return jpeg_with_declared_size(draw(st.sampled_from(JPEGS)), width % 65536, height % 65536), "image/jpeg"
    if kind == "bmp":
        sign = draw(st.sampled_from([1, -1]))
        return _bmp_declaring(width, sign * height, draw(st.sampled_from([1, 8, 24, 32]))), "image/bmp"
    return _webp_declaring(max(1, width % 2**24), max(1, height % 2**24)), "image/webp"


@pytest.mark.processes
@fuzz(1300)
@given(crafted=huge_headers())
def test_detect_headers_declaring_huge_dimensions(pool, crafted):
    body, content_type = crafted
    answer = _send(pool, "huge_headers", body, {"Content-Type": content_type})
    assert answer.status_code != 200 or answer.json()["image"]["width"] * answer.json()["image"]["height"] <= 50_000_000


content_types = st.one_of(
    st.sampled_from(IMAGE_TYPES + ["text/plain", "application/json", "multipart/form-data", "multipart/mixed",
                                   "image/", "/", "", "IMAGE/PNG", "image/png;", "multipart/form-data; boundary="]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80).map(str.lstrip),  # HTTP drops leading blanks
    st.builds(
        lambda t, s, p: f"{t}/{s}{p}",
        st.sampled_from(["image", "application", "multipart", "text", "video", "x"]),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=";"), max_size=20),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(lambda p: f"; {p}" if p else ""),
    ),
)


@pytest.mark.processes
@fuzz(1500)
@given(content_type=content_types, body=st.one_of(st.sampled_from(SMALL), st.binary(max_size=512)))
def test_detect_random_content_types(pool, content_type, body):
    _send(pool, "content_types", body, {"Content-Type": content_type})


boundaries = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'()+_,-./:=? "), min_size=1, max_size=70
)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
unicode_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@st.composite
def multipart_bodies(draw) -> tuple[bytes, str]:
    boundary = draw(boundaries).rstrip(" ") or "b"
    newline = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    out = io.BytesIO()
    for _ in range(draw(st.integers(0, 4))):
        out.write(b"--" + boundary.encode() + newline)
        headers = []
        if draw(st.booleans()):
            disposition = "form-data"
            if draw(st.booleans()):
                disposition += f'; name="{draw(header_text)}"'
            if draw(st.booleans()):
                disposition += f'; filename="{draw(st.one_of(header_text, unicode_text))}"'
            headers.append(f"Content-Disposition: {disposition}")
        if draw(st.booleans()):
            headers.append(f"Content-Type: {draw(st.one_of(st.sampled_from(IMAGE_TYPES + ['text/plain']), header_text))}")
        for _ in range(draw(st.integers(0, 2))):
            headers.append(f"{draw(st.text('abcXYZ-_', min_size=1, max_size=10))}: {draw(header_text)}")
        raw_headers = newline.join(h.encode("utf-8", "surrogateescape") for h in headers)
        if draw(st.integers(0, 9)) == 0:  # bytes that are no text at all
            raw_headers += draw(st.binary(max_size=40))
        out.write(raw_headers + newline + newline)
        out.write(draw(st.one_of(st.sampled_from(SMALL), st.binary(max_size=300), damaged_pictures())))
        out.write(newline)
    if draw(st.booleans()):
        out.write(b"--" + boundary.encode() + b"--" + newline)
    body = out.getvalue()
    if draw(st.integers(0, 4)) == 0:  # cut anywhere
        body = body[: draw(st.integers(0, len(body)))]
    declared = boundary if draw(st.integers(0, 9)) else draw(boundaries)
    quoted = draw(st.booleans())
    content_type = f'multipart/form-data; boundary="{declared}"' if quoted else f"multipart/form-data; boundary={declared}"
    return body, content_type


@pytest.mark.processes
@fuzz(2600)
@given(crafted=multipart_bodies())
def test_detect_random_multipart_bodies(pool, crafted):
    body, content_type = crafted
    _send(pool, "multipart", body, {"Content-Type": content_type})


@pytest.mark.processes
def test_detect_fuzzing_left_every_worker_alive_and_memory_bounded(pool):
    service, _, baseline = pool
    total = sum(REQUESTS.values())
    print(f"\n/detect fuzz: {total} requests {dict(REQUESTS)}; statuses {dict(sorted(STATUSES.items()))}; "
          f"reasons {dict(REASONS.most_common())}")
    if len(REQUESTS) == 5:  # every /detect strategy ran (not a -k selection)
        assert total >= MIN_REQUESTS, dict(REQUESTS)
    assert _worker_pids(service) == set(baseline), "a worker was replaced"
    log = service.log()
    for sign in ("Worker exiting", "WORKER TIMEOUT", "Traceback", "unhandled error"):
        assert sign not in log, log[-3000:]
    assert log.count("Booting worker") == 2, log[-3000:]
    after = {pid: _rss_bytes(pid) for pid in baseline}
    growth = sum(after.values()) - sum(baseline.values())
    print(f"worker RSS before {sum(baseline.values()) / 2**20:.1f} MiB, after {sum(after.values()) / 2**20:.1f} MiB, "
          f"growth {growth / 2**20:+.1f} MiB")
    assert growth < 100 * 2**20, (baseline, after)


# === the desired-properties parser =============================================================

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.sampled_from(["", "http://x/y.zip", "https://a.blob.core.windows.net/m/x_1.0.zip?sig=s",
                                          "ftp://x/y", "a" * 64, "0" * 64, "1.0", "..", "../x", "model_1.0.zip"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
KEYS = ["model", "FileName", "DownloadUrl", "ContentMD5", "inference", "download", "$version", "$invalid", "$metadata"]
MODEL_KEYS = ["name", "version", "url", "sha256", "md5", "size", "signature", "allow_downgrade"]
VALID = [
    {"model": {"name": "ssd", "version": "2.0.0", "url": "https://a.blob.core.windows.net/m/ssd.zip?sv=1&sig=x",
               "sha256": "ab" * 32, "md5": "00112233445566778899aabbccddeeff", "size": 1234}},
    {"model": {"name": "ssd", "version": "2.0.0", "url": "http://files.local/ssd.zip", "md5": "ABEiM0RVZneImaq7zN3u/w=="},
     "inference": {"score_threshold": 0.4}, "download": {"max_bytes_per_second": 65536}, "$version": 7},
    {"FileName": "tiny-yolov3-11_1.0.zip", "DownloadUrl": "https://x.blob.core.windows.net/c/tiny.zip?sig=1",
     "ContentMD5": "ABEiM0RVZneImaq7zN3u/w=="},
    {"FileName": "detector.zip", "DownloadUrl": "http://h/detector.zip", "ContentMD5": "00112233445566778899aabbccddeeff"},
]


@st.composite
def mutated_documents(draw) -> dict:
    document = json.loads(json.dumps(draw(st.sampled_from(VALID))))
    for _ in range(draw(st.integers(1, 6))):
        where = document
        if "model" in document and isinstance(document["model"], dict) and draw(st.booleans()):
            where = document["model"]
        keys = MODEL_KEYS if where is not document else KEYS
        key = draw(st.one_of(st.sampled_from(keys), st.sampled_from(list(where) or keys), st.text(max_size=8)))
        action = draw(st.sampled_from(["delete", "replace", "null", "retype", "grow"]))
        if action == "delete":
            where.pop(key, None)
        elif action == "null":
            where[key] = None
        elif action == "retype":
            where[key] = draw(json_scalars)
        elif action == "grow":
            where[key] = draw(st.sampled_from(["x" * 5000, ["y"] * 2000, {"z": "w" * 40_000}, "é" * 1500]))
        else:
            where[key] = draw(json_values)
    return document


documents = st.one_of(
    mutated_documents(),
    mutated_documents(),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), json_values, max_size=6),
    json_values,  # not even an object
)
PARSED = Counter()


@fuzz(2500, shrink=True)
@given(document=documents, patch=st.one_of(st.none(), st.dictionaries(st.sampled_from(KEYS), json_values, max_size=3)))
def test_desired_parser_returns_or_raises_desired_error(document, patch):
    if patch is not None and isinstance(document, dict):
        document = merge_patch(document, patch)  # what the updater does with a twin patch
    try:
        state = parse_desired(document)
    except DesiredError as exc:
        assert str(exc)
        PARSED["refused"] += 1
        return
    PARSED["accepted"] += 1
    assert isinstance(state, DesiredState)
    if state.model is not None:
        # url may be absent (a version in the store), never anything but http(s)
        assert state.model.url is None or state.model.url.startswith(("http://", "https://"))
        assert state.model.url is not None or (state.model.delta is None and state.model.compression is None)
        for part in (state.model.name, state.model.version):
            assert "/" not in part and "\\" not in part and ".." not in part and part
    assert state.score_threshold is None or 0.0 <= state.score_threshold <= 1.0


def test_reference_keys_without_content_md5_are_refused():
    """Found by the fuzzer: these were accepted and the bundle staged unverified."""
    with pytest.raises(DesiredError):
        parse_desired({"FileName": "tiny-yolov3-11_1.0.zip", "DownloadUrl": "https://x.blob.core.windows.net/c/t.zip"})


def test_desired_parser_fuzzing_saw_both_outcomes():
    print(f"\ndesired parser fuzz: {dict(PARSED)}")
    if PARSED:
        assert sum(PARSED.values()) >= 2000 and PARSED["accepted"] > 50 and PARSED["refused"] > 500, dict(PARSED)


# === the bundle unpacker =======================================================================

LIMITS = UnpackLimits(max_files=16, max_total_bytes=256 * 1024, max_ratio=200.0)
# One sandbox for every example (creating and removing directories per example costs more
# than the unpacking): dest = SANDBOX/a/b/c/dest, so up to four ".." still land inside it,
# and absolute names point into it too, where the test can see them.
SANDBOX = Path(tempfile.gettempdir()) / f"twinfer-fuzz-unpack-{os.getpid()}"
CHAIN = [SANDBOX / "a", SANDBOX / "a" / "b", SANDBOX / "a" / "b" / "c"]
DEST = CHAIN[-1] / "dest"
BUNDLE = SANDBOX / "bundle.zip"

_plain = st.sampled_from(["model.onnx", "model.tflite", "labels.txt", "twinfer.json", "MODEL.ONNX", "x", "a.txt"])
hostile_names = st.one_of(
    _plain,
    _plain.map(lambda n: "top/" + n),
    st.sampled_from(["../evil.txt", "../../evil.txt", "../../../../evil.txt", "a/../../evil.txt", "./x", "a//b",
                     "dir/", "top/", "top/sub/x", "C:evil.txt", "c:\\evil.txt", "..\\evil.txt", "a\\b", "..",
                     "__MACOSX/._x", "top/.DS_Store", ".DS_Store", "", "/", "x/", "nul", "con.txt"]),
    st.just(str(SANDBOX / "absolute-evil.txt")),
    st.just(str(CHAIN[0] / "absolute-evil2.txt")),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=30),
    st.lists(st.sampled_from(["..", ".", "a", "top", "évil", "\\", "x.onnx"]), min_size=1, max_size=4).map("/".join),
)
BENIGN_NAMES = ["model.onnx", "labels.txt", "twinfer.json", "notes.md", "labelmap.txt", "x.tflite"]
benign_names = st.builds(operator.add, st.sampled_from(["", "", "", "top/"]), st.sampled_from(BENIGN_NAMES))


@st.composite
def zip_entry(draw, benign: bool) -> tuple[zipfile.ZipInfo, bytes]:
    hostile = not benign and draw(st.integers(0, 2)) == 0  # a hostile archive has some normal entries too
    info = zipfile.ZipInfo(draw(hostile_names if hostile else benign_names), date_time=(2020, 1, 1, 0, 0, 0))
    compressions = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]
    modes = [0o100644, 0o100755, 0]
    if hostile:
        compressions += [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
        modes += [0o120777, 0o040755, 0o010644]
    info.compress_type = draw(st.sampled_from(compressions))
    info.external_attr = (draw(st.sampled_from(modes)) << 16) | (0x10 if hostile and draw(st.booleans()) else 0)
    size = draw(st.sampled_from([0, 10, 1000, 5000, 70_000]))
    kind = draw(st.sampled_from(["zeros", "pattern", "noise", "noise"]))
    if kind == "zeros":
        data = bytes(size)
    elif kind == "pattern":
        data = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    else:
        data = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    return info, data


ENTRIES = {True: zip_entry(True), False: zip_entry(False)}  # built once: building strategies is not free
ENTRY_COUNTS = {True: st.integers(1, 4), False: st.integers(0, 17)}
CORRUPTIONS = st.sampled_from(["none", "flip", "flip", "truncate", "insert", "encrypted_flag", "utf8_flag"])


@st.composite
def zip_archives(draw) -> bytes:
    benign = draw(st.integers(0, 9)) < 4  # four in ten: a plausible bundle, to exercise the happy path too
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are part of the test
        with zipfile.ZipFile(buffer, "w") as archive:
            for _ in range(draw(ENTRY_COUNTS[benign])):
                archive.writestr(*draw(ENTRIES[benign]))
    data = bytearray(buffer.getvalue())
    corruption = "none" if benign else draw(CORRUPTIONS)
    if corruption == "flip" and data:
        for _ in range(draw(st.integers(1, 10))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif corruption == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif corruption == "insert":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    elif corruption in ("encrypted_flag", "utf8_flag"):
        bit = 0x1 if corruption == "encrypted_flag" else 0x800
        for match in re.finditer(rb"PK\x01\x02|PK\x03\x04", bytes(data)):  # central and local headers
            offset = match.start() + (8 if data[match.start() + 2] == 1 else 6)
            flags = struct.unpack_from("<H", data, offset)[0] | bit
            struct.pack_into("<H", data, offset, flags)
    return bytes(data)


UNPACKED = Counter()


@pytest.fixture(scope="module")
def sandbox():
    shutil.rmtree(SANDBOX, ignore_errors=True)
    DEST.mkdir(parents=True)
    yield SANDBOX
    shutil.rmtree(SANDBOX, ignore_errors=True)


@fuzz(2500)
@given(archive=zip_archives())
def test_bundle_unpacker_unpacks_inside_dest_or_raises_bundle_error(sandbox, archive):
    BUNDLE.write_bytes(archive)
    try:
        written = unpack_bundle(BUNDLE, DEST, LIMITS)
    except BundleError as exc:
        UNPACKED[f"refused:{exc.reason}"] += 1
        assert list(DEST.iterdir()) == []  # as empty as it was given
    else:
        UNPACKED["unpacked"] += 1
        assert written, "an empty bundle must be refused"
        for path in written:
            assert path.parent == DEST and path.is_file() and not path.is_symlink()
        assert sorted(p.name for p in DEST.iterdir()) == sorted(p.name for p in written)
        for path in written:
            path.unlink()
    allowed = {BUNDLE, DEST, *CHAIN}
    outside = [p for p in SANDBOX.rglob("*") if p not in allowed or p.is_symlink()]
    assert not outside, f"written outside dest: {outside}"


def test_bundle_unpacker_fuzzing_saw_both_outcomes():
    print(f"\nbundle unpacker fuzz: {dict(sorted(UNPACKED.items()))}")
    if UNPACKED:
        assert sum(UNPACKED.values()) >= 2000 and UNPACKED["unpacked"] > 100, dict(UNPACKED)
