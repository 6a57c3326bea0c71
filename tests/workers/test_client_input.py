"""Hostile client input against real gunicorn: every case a 4xx with the error document,
never a 500, and no label a client can grow without bound (issue: hardening, round 2)."""
from __future__ import annotations

import base64
import gzip
import json
import re
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.support.paths import IMAGES
from tests.support.service_process import ServiceProcess
from workers.kserve.codec import OutputTensor, encode_response

pytestmark = pytest.mark.processes

MODEL = "ssd-mobilenetv2-oidv4"
INPUT, SHAPE = "normalized_input_image_tensor", [1, 300, 300, 3]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with ServiceProcess.start(tmp_path_factory.mktemp("store"), workers=2) as proc:
        yield proc


def _error(response: requests.Response, status: int, reason: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["reason"] == reason, body
    return body["error"]


def _infer(service, document: dict, **options) -> requests.Response:
    return requests.post(f"{service.url}/v2/models/{MODEL}/infer", data=json.dumps(document).encode(),
                         timeout=30, **options)


def _image_request(shape: list[int], threshold: object = None) -> dict:
    picture = base64.b64encode((IMAGES / "chelsea.png").read_bytes()).decode()
    document: dict = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": shape, "data": [picture]}]}
    if threshold is not None:
        document["parameters"] = {"max_detections": threshold}
    return document


# --- numbers a client sends are ASCII ----------------------------------------------------


@pytest.mark.parametrize("raw", ["\u00b2", "\u0661", "\uff11", "1_0", " 1e400", "nan", "+"])
def test_unicode_and_odd_numbers_in_the_query_are_a_400_naming_the_field(service, raw):
    png = (IMAGES / "chelsea.png").read_bytes()
    for field in ("max_detections", "threshold"):
        response = requests.post(f"{service.url}/detect", params={field: raw}, data=png,
                                 headers={"Content-Type": "image/png"}, timeout=30)
        assert field in _error(response, 400, "bad_parameter")


def test_unicode_digits_in_v2_parameters_and_the_header_length_are_a_400(service):
    assert "parameters.max_detections" in _error(_infer(service, _image_request([1], "\u00b2")), 400, "bad_parameter")
    header = json.dumps({"inputs": [{"name": INPUT, "datatype": "FP32", "shape": [1], "data": [1.0]}]}).encode()
    response = requests.post(f"{service.url}/v2/models/{MODEL}/infer", data=header,
                             headers={"Inference-Header-Content-Length": "\u00b2"}, timeout=30)
    assert "Inference-Header-Content-Length" in _error(response, 400, "bad_request")


# --- no recursion over client-shaped data ------------------------------------------------


@pytest.mark.parametrize("depth", [900, 1000, 1020])
def test_deeply_nested_bytes_data_is_a_400(service, depth):
    data = "[" * depth + '"aGk="' + "]" * depth
    body = '{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ' + data + "}]}"
    response = requests.post(f"{service.url}/v2/models/{MODEL}/infer", data=body.encode(), timeout=30)
    assert 400 <= response.status_code < 500, response.text


# --- broken HTTP framing -------------------------------------------------------------------


def _raw_exchange(service, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", service.port), timeout=15) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection after the answer
            answer += chunk
    return answer


@pytest.mark.parametrize("chunks", [
    b"zz\r\nabc\r\n0\r\n\r\n",  # not a hex size
    b"3\r\nabcXY0\r\n\r\n",  # no CRLF after the chunk
    b"3;" + b"x" * 20000 + b"\r\nabc\r\n0\r\n\r\n",  # an oversized chunk extension
    b"3\r\nabc\r\n0\r\n" + b"".join(b"T%d: v\r\n" % i for i in range(200)) + b"\r\n",  # too many trailers
])
@pytest.mark.parametrize("path", ["/detect", f"/v2/models/{MODEL}/infer"])
def test_malformed_chunked_bodies_are_a_400_and_the_connection_closes(service, chunks, path):
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    answer = _raw_exchange(service, head + chunks)
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:300]
    if status == 400 and b"\r\n\r\n{" in answer:
        document = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert document["reason"] in ("malformed_body", "not_an_image", "bad_request"), document


# --- JSON that costs more to parse than it weighs ----------------------------------------------


@pytest.mark.parametrize("token", [b"[],", b"{},"])
def test_a_compressed_flood_of_empty_containers_is_refused_unparsed(service, token):
    flood = b'{"inputs": [{"name": "%s", "datatype": "FP32", "shape": [1], "data": [' % INPUT.encode()
    flood += token * (6 * 1024 * 1024) + b"0]}]}"  # 18 MiB of JSON: 6 M Python objects if parsed
    body = gzip.compress(flood, 9)
    assert len(body) < 100_000
    response = requests.post(f"{service.url}/v2/models/{MODEL}/infer", data=body,
                             headers={"Content-Encoding": "gzip"}, timeout=30)
    assert "more than this model" in _error(response, 413, "json_too_complex")


# --- pictures that are cheap to send and dear to decode -----------------------------------------


DECODE_MEMORY = 60_000_000


@pytest.fixture(scope="module")
def impatient_worker(tmp_path_factory):
    """One worker with two inference slots (2 cores, one intra-op thread), 60 MB of decode
    memory, and pictures that never wait for room in it."""
    env = {"TWINFER_INTRA_OP_THREADS": "1", "TWINFER_DECODE_WAIT": "0", "TWINFER_DECODE_MEMORY": str(DECODE_MEMORY)}
    with ServiceProcess.start(tmp_path_factory.mktemp("store"), workers=1, extra_env=env) as proc:
        yield proc


def _flat_png(side: int) -> bytes:
    import cv2

    return cv2.imencode(".png", np.zeros((side, side, 3), np.uint8))[1].tobytes()


def _post_png(service, picture: bytes) -> requests.Response:
    return requests.post(f"{service.url}/detect", data=picture, headers={"Content-Type": "image/png"}, timeout=60)


def test_large_pictures_decoding_at_once_beyond_the_decode_memory_get_503_with_retry_after(impatient_worker):
    picture = _flat_png(3000)  # 54 MB at the decoder's peak: one at a time fits
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _post_png(impatient_worker, picture), range(6)))
    busy = [answer for answer in answers if answer.status_code == 503]
    assert busy and len(busy) < len(answers), [answer.status_code for answer in answers]
    assert all(answer.status_code in (200, 503) for answer in answers)
    for answer in busy:
        assert "TWINFER_DECODE_WAIT" in _error(answer, 503, "decode_busy")
        assert answer.headers["Retry-After"] == "1"


def test_a_picture_whose_decode_alone_exceeds_the_decode_memory_is_refused_undecoded(impatient_worker):
    picture = _flat_png(3200)  # 61 MB at the decoder's peak
    assert len(picture) < 200_000
    message = _error(_post_png(impatient_worker, picture), 413, "image_too_large")
    assert "3200x3200 PNG" in message and "TWINFER_DECODE_MEMORY" in message


# --- a truncated JPEG is a truncated JPEG ----------------------------------------------------


def test_a_header_only_jpeg_declaring_6000x6000_is_corrupt_not_decoded(service):
    import cv2

    big = cv2.imencode(".jpg", np.full((6000, 6000, 3), 127, np.uint8))[1].tobytes()
    start_of_scan = big.index(b"\xff\xda")
    bomb = big[: start_of_scan + 40] + b"\xff\xd9"  # headers, a sliver of scan, an end marker
    assert len(bomb) < 2000
    response = requests.post(f"{service.url}/detect", data=bomb, headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert "truncated" in _error(response, 400, "corrupt_image")


# --- metrics labels a client controls are a closed set -----------------------------------------


def test_made_up_methods_do_not_grow_the_metrics(service):
    before = requests.get(service.url + "/metrics", timeout=10).text
    for index in range(60):
        requests.request(f"BREW{index}", service.url + "/models", timeout=10)
    text = requests.get(service.url + "/metrics", timeout=10).text
    methods = set(re.findall(r'twinfer_http_request_duration_seconds_count\{[^}]*method="([^"]+)"', text))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}, methods
    assert "other" in methods and len(text) < len(before) + 20_000


# --- protocol details --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/models", "/metrics", "/openapi.json", "/v2",
                                  "/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}",
                                  f"/v2/models/{MODEL}/ready"])
def test_head_is_answered_wherever_get_is(service, path):
    get, head = requests.get(service.url + path, timeout=10), requests.head(service.url + path, timeout=10)
    assert head.status_code == get.status_code == 200
    assert head.content == b"" and head.headers["Content-Type"] == get.headers["Content-Type"]


def test_fp32_values_out_of_range_are_a_400(service):
    document = {"inputs": [{"name": INPUT, "datatype": "FP32", "shape": SHAPE, "data": [1e39] * (300 * 300 * 3)}]}
    assert "FP32 range" in _error(_infer(service, document), 400, "bad_request")


@pytest.mark.parametrize("shape", [[], [1, 1, 1], [1, 1]])
def test_the_image_input_takes_shape_1_only(service, shape):
    assert "shape [1]" in _error(_infer(service, _image_request(shape)), 400, "bad_request")
    assert _infer(service, _image_request([1])).status_code == 200


def test_non_finite_outputs_are_null_in_json_and_exact_in_binary():
    values = np.array([np.nan, np.inf, -np.inf, 1.5], np.float32)
    data, header_length = encode_response({"model_name": "m"}, [(OutputTensor.of_array("y", values), False)])
    assert header_length is None and json.loads(data)["outputs"][0]["data"] == [None, None, None, 1.5]
    data, header_length = encode_response({"model_name": "m"}, [(OutputTensor.of_array("y", values), True)])
    raw = np.frombuffer(data[header_length:], np.float32)
    assert np.isnan(raw[0]) and raw[1] == np.inf and raw[2] == -np.inf and raw[3] == 1.5
