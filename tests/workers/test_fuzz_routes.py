"""Fuzzing every route of the real service (gunicorn, 2 workers) with hypothesis: random
methods, path parameters, query parameters, headers and bodies (random bytes, random
JSON, KServe-shaped inference requests with random parts, gzip or not). The promise under
test: no 5xx for anything a client sends, and every error an ``{"error", "reason"}``
document. The routes come from the served ``/openapi.json``, so a new route is fuzzed
without touching this file. (``test_fuzz.py`` goes deeper into ``/detect``'s pictures.)"""
from __future__ import annotations

import gzip
import json
import re
import socket
from urllib.parse import quote, urlencode

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from tests.support.fuzzing import fuzz
from tests.support.paths import PROJECT_ROOT
from tests.support.service_process import ServiceProcess

pytestmark = pytest.mark.processes

ROUTES = list(json.loads((PROJECT_ROOT / "workers" / "openapi.json").read_text())["paths"].items())
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES"]
QUERY_KEYS = ["threshold", "max_detections", "model", "binary_data", "binary_data_output", "format", "version"]
# Header values requests can send: printable latin-1, no CR or LF, no whitespace at either end.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40).map(
    str.strip)
any_text = st.text(max_size=30)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with ServiceProcess.start(tmp_path_factory.mktemp("fuzz-routes") / "store", workers=2) as proc:
        session = requests.Session()
        session.headers["Connection"] = "close"
        model = session.get(proc.url + "/models", timeout=10).json()["active"]
        metadata = session.get(f"{proc.url}/v2/models/{model['name']}", timeout=10).json()
        yield proc, session, model, metadata


def _path_value(real: str) -> st.SearchStrategy[str]:
    """A path parameter: the real one, or anything, percent-encoded."""
    return st.one_of(st.just(real), any_text.map(lambda text: quote(text, safe="")))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=20,
)


def kserve_requests(metadata: dict) -> st.SearchStrategy[dict]:
    """Inference requests right in their outline, anything in their parts."""
    names = [tensor["name"] for tensor in metadata["inputs"]] + ["x"]
    tensor = st.fixed_dictionaries(
        {
            "name": st.one_of(st.sampled_from(names), json_values),
            "shape": st.one_of(st.lists(st.integers(-2, 8), max_size=4), json_values),
            "datatype": st.one_of(st.sampled_from(DATATYPES), json_values),
            "data": json_values,
        },
        optional={"parameters": st.one_of(st.dictionaries(st.sampled_from(["binary_data_size", "content_type"]),
                                                          json_values, max_size=2), json_values)},
    )
    return st.fixed_dictionaries(
        {"inputs": st.one_of(st.lists(tensor, max_size=3), json_values)},
        optional={
            "id": json_values,
            "outputs": st.one_of(st.lists(st.fixed_dictionaries({"name": json_values}), max_size=2), json_values),
            "parameters": st.one_of(st.dictionaries(st.sampled_from(QUERY_KEYS + ["binary_data_output"]),
                                                    json_values, max_size=3), json_values),
        },
    )


@st.composite
def requests_to_any_route(draw, model: dict, metadata: dict):
    path, operations = draw(st.sampled_from(ROUTES))
    path = path.replace("{name}", draw(_path_value(model["name"]))).replace(
        "{version}", draw(_path_value(model["version"])))
    own = [method.upper() for method in operations]
    method = draw(st.one_of(st.sampled_from(own), st.sampled_from(own), st.sampled_from(METHODS)))
    query = draw(st.lists(st.tuples(st.one_of(st.sampled_from(QUERY_KEYS), any_text), any_text), max_size=3))
    headers = draw(st.dictionaries(
        st.sampled_from(["Content-Type", "Content-Encoding", "Inference-Header-Content-Length", "Accept",
                         "Accept-Encoding", "Authorization", "Expect", "X-Anything"]),
        st.one_of(header_text, st.sampled_from(["application/json", "image/png", "gzip", "deflate", "identity",
                                                 "100-continue", "0", "-1", "99999999999999999999", "Bearer x"])),
        max_size=4,
    ))
    body = draw(st.one_of(
        st.just(b""),
        st.binary(max_size=300),
        json_values.map(lambda value: json.dumps(value).encode()),
        kserve_requests(metadata).map(lambda value: json.dumps(value).encode()),
    ))
    if headers.get("Content-Encoding") == "gzip" and draw(st.booleans()):
        body = gzip.compress(body)  # a correct gzip, so the inflated request is fuzzed too
    return method, path, query, headers, body


def _check(answer: requests.Response, method: str) -> None:
    assert answer.status_code < 500, (answer.status_code, answer.text[:300])
    if answer.status_code >= 400 and method != "HEAD":
        document = answer.json()
        assert isinstance(document.get("error"), str) and re.fullmatch(r"[a-z_]+", document.get("reason", "")), document


@fuzz(600)
@given(data=st.data())
def test_no_route_answers_any_request_with_a_5xx(service, data):
    proc, session, model, metadata = service
    method, path, query, headers, body = data.draw(requests_to_any_route(model, metadata))
    url = proc.url + path + ("?" + urlencode(query) if query else "")
    _check(session.request(method, url, headers=headers, data=body, timeout=60), method)


@fuzz(400)
@given(data=st.data())
def test_inference_requests_with_random_parts_get_no_5xx(service, data):
    proc, session, model, metadata = service
    body = json.dumps(data.draw(kserve_requests(metadata))).encode()
    version = data.draw(st.booleans())
    path = f"/v2/models/{model['name']}" + (f"/versions/{model['version']}" if version else "") + "/infer"
    answer = session.post(proc.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=60)
    _check(answer, "POST")


@pytest.mark.parametrize("method", METHODS + ["BREW"])
def test_every_route_answers_every_method_without_a_5xx(service, method):
    proc, session, model, _ = service
    for path, _operations in ROUTES:
        path = path.replace("{name}", model["name"]).replace("{version}", model["version"])
        for query in ("", "?" + urlencode({key: "\u00b2" for key in QUERY_KEYS})):
            answer = session.request(method, proc.url + path + query, data=b"{}", timeout=60,
                                     headers={"Content-Type": "application/json"})
            _check(answer, method)



@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (b"GET /healthz HTTP/9.9\r\nHost: t\r\n\r\n", 400, "malformed_request"),
        (b"GET /healthz HTTP/1.1\r\nBad Header: x\r\n\r\n", 400, "malformed_request"),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "uri_too_long"),
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\nExpect: teapot\r\n\r\n", 417, "expectation_failed"),
        (b"POST /detect HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: teapot, chunked\r\n\r\n", 400,
         "unsupported_transfer_coding"),
    ],
)
def test_requests_gunicorn_cannot_parse_get_the_json_error_document(service, request_bytes, status, reason):
    """Refused before the app sees them, yet answered like every other error (no HTML page,
    no 501 for a transfer coding gunicorn does not know)."""
    proc = service[0]
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        sock.sendall(request_bytes)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), reply[:300]
    assert b"content-type: application/json" in head.lower()
    document = json.loads(body)
    assert document["reason"] == reason and document["error"].startswith("malformed request"), document
