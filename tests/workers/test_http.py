"""The HTTP API against a real gunicorn pool (2 workers) started by the real supervisor."""
from __future__ import annotations

import io
import re
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from tests.support.images import encoded, jpeg_with_declared_size, png_declaring

pytestmark = pytest.mark.processes  # every test here starts processes


def _post(service, data: bytes, content_type: str = "image/png", params: dict | None = None) -> requests.Response:
    return requests.post(service.url + "/detect", data=data, headers={"Content-Type": content_type}, params=params, timeout=30)


def test_detects_cat_with_model_version_and_timing(service, images):
    response = _post(service, (images / "chelsea.png").read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "ssd-mobilenetv2-oidv4", "version": "1.0.0", "generation": 1}
    assert body["image"] == {"width": 451, "height": 300, "format": "PNG"}
    top = body["detections"][0]
    assert top["label"] == "Cat" and top["class_id"] == 8 and top["score"] > 0.7
    assert abs(top["box_px"]["xmax"] - top["box"]["xmax"] * 451) < 0.2
    assert abs(top["box_px"]["ymax"] - top["box"]["ymax"] * 300) < 0.2
    assert set(body["timing_ms"]) == {"decode", "inference", "postprocess", "total"}
    assert response.headers["X-Model-Version"] == "1.0.0"


def test_jpeg_large_picture_is_decoded_reduced_and_mapped_back(service, images):
    """A 4x upscaled photo (decoded at reduced scale) gives the same normalised boxes."""
    source = Image.open(images / "astronaut.png").convert("RGB")
    small, large = io.BytesIO(), io.BytesIO()
    source.save(small, "JPEG", quality=95)
    source.resize((2048, 2048)).save(large, "JPEG", quality=95)
    small_body = _post(service, small.getvalue(), "image/jpeg").json()
    large_body = _post(service, large.getvalue(), "image/jpeg").json()
    assert large_body["image"]["width"] == 2048
    assert "Person" in [d["label"] for d in large_body["detections"]]
    person_small = next(d for d in small_body["detections"] if d["label"] == "Person")
    person_large = next(d for d in large_body["detections"] if d["label"] == "Person")
    for key in ("xmin", "ymin", "xmax", "ymax"):
        assert abs(person_small["box"][key] - person_large["box"][key]) < 0.03


def test_multipart_upload(service, images):
    data = (images / "chelsea.png").read_bytes()
    response = requests.post(
        service.url + "/detect",
        files={"meta": ("", b"ignored", "text/plain"), "image": ("chelsea.png", data, "image/png")},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["detections"][0]["label"] == "Cat"


def test_threshold_and_max_detections(service, images):
    data = (images / "astronaut.png").read_bytes()
    many = _post(service, data, params={"threshold": "0.05"}).json()["detections"]
    assert len(many) > 1
    assert all(d["score"] >= 0.05 for d in many)
    one = _post(service, data, params={"threshold": "0.05", "max_detections": "1"}).json()["detections"]
    assert len(one) == 1 and one[0]["score"] == max(d["score"] for d in many)
    none = _post(service, data, params={"threshold": "1.0"}).json()["detections"]
    assert none == []


def _assert_error(response: requests.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["reason"] == reason and body["error"]


def test_bad_inputs_are_client_errors(service, images):
    jpeg = (images / "grace_hopper.jpg").read_bytes()
    png = (images / "chelsea.png").read_bytes()
    _assert_error(_post(service, b"", "image/jpeg"), 400, "empty_body")
    _assert_error(_post(service, b"this is not an image", "image/jpeg"), 400, "not_an_image")
    _assert_error(_post(service, jpeg[: len(jpeg) // 2], "image/jpeg"), 400, "corrupt_image")
    _assert_error(_post(service, png[: len(png) // 2], "image/png"), 400, "corrupt_image")
    _assert_error(_post(service, b'{"a": 1}', "application/json"), 415, "unsupported_media_type")
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    _assert_error(_post(service, gif.getvalue(), "image/gif"), 415, "unsupported_media_type")
    _assert_error(_post(service, png, params={"threshold": "high"}), 400, "bad_parameter")
    _assert_error(_post(service, png, params={"threshold": "1.5"}), 400, "bad_parameter")
    _assert_error(_post(service, png, params={"max_detections": "0"}), 400, "bad_parameter")
    no_image = requests.post(service.url + "/detect", files={"note": ("", b"hi", "text/plain")}, timeout=10)
    _assert_error(no_image, 400, "empty_body")
    broken = requests.post(
        service.url + "/detect", data=b"--x\r\nnot a part", headers={"Content-Type": "multipart/form-data; boundary=x"}, timeout=10
    )
    assert broken.status_code == 400 and "error" in broken.json()


def test_declared_dimensions_over_the_limit_are_refused_before_decoding(service, images):
    _assert_error(_post(service, png_declaring(100_000, 100_000), "image/png"), 413, "image_too_large")
    bomb = jpeg_with_declared_size((images / "grace_hopper.jpg").read_bytes(), 60_000, 60_000)
    _assert_error(_post(service, bomb, "image/jpeg"), 413, "image_too_large")


def test_body_over_limit_is_refused_from_content_length_without_reading_it(service):
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(
            b"POST /detect HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 1000000000\r\n\r\n" + b"\xff" * 1024
        )
        started = time.monotonic()
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
        reply = b"".join(chunks).decode("latin-1")
    assert reply.startswith("HTTP/1.1 413"), reply
    assert '"reason":"body_too_large"' in reply
    assert time.monotonic() - started < 5


def test_chunked_body_over_limit_is_refused(service):
    big = encoded(".bmp", 1400, 1400)  # ~5.9 MB, over the 4 MiB limit this service runs with
    response = requests.post(
        service.url + "/detect", data=iter([big[i : i + 65536] for i in range(0, len(big), 65536)]),
        headers={"Content-Type": "image/bmp"}, timeout=30,
    )
    _assert_error(response, 413, "body_too_large")


def test_other_formats(service):
    for ext, fmt in ((".bmp", "BMP"), (".webp", "WEBP"), (".jpg", "JPEG")):
        response = _post(service, encoded(ext, 320, 240), "application/octet-stream")
        assert response.status_code == 200, (ext, response.text)
        assert response.json()["image"] == {"width": 320, "height": 240, "format": fmt}


def test_health_readiness_models_and_unknown_route(service):
    assert requests.get(service.url + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(service.url + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["version"] == "1.0.0"
    active = requests.get(service.url + "/models", timeout=5).json()["active"]
    assert active["decoder"] == "ssd_anchors" and active["format"] == "onnx"
    assert active["labels"] == 24 and active["input"]["width"] == 300
    missing = requests.get(service.url + "/nope", timeout=5)
    assert missing.status_code == 404 and missing.headers["Content-Type"].startswith("application/json")


def _detect_count(metrics_text: str) -> float:
    pattern = re.compile(r'^twinfer_http_request_duration_seconds_count\{(?=[^}]*route="/detect")(?=[^}]*status="200")[^}]*\} (\S+)$')
    return sum(float(m.group(1)) for line in metrics_text.splitlines() if (m := pattern.match(line)))


def test_metrics_sum_requests_served_by_both_workers(service, images):
    before = _detect_count(requests.get(service.url + "/metrics", timeout=5).text)
    data = (images / "chelsea.png").read_bytes()
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: _post(service, data), range(40)))
    assert all(r.status_code == 200 for r in responses)
    assert len({r.headers["X-Twinfer-Worker"] for r in responses}) == 2
    text = requests.get(service.url + "/metrics", timeout=5).text
    assert _detect_count(text) - before == 40
    assert re.search(r"^twinfer_workers 2\.0$", text, re.M)
    live_models = re.findall(r'^twinfer_worker_model_info\{[^}]*pid="(\d+)"[^}]*version="1.0.0"[^}]*\} 1\.0$', text, re.M)
    assert len(set(live_models)) == 2
    assert re.search(r'^twinfer_inference_duration_seconds_count\{model="ssd-mobilenetv2-oidv4",version="1.0.0"\} ', text, re.M)
    assert re.search(r'^twinfer_request_errors_total\{reason="[a-z_]+"\} ', text, re.M) or "twinfer_request_errors_total" in text


def test_promtool_accepts_the_exposition(service, images):
    _post(service, (images / "chelsea.png").read_bytes())
    _post(service, b"", "image/png")
    text = requests.get(service.url + "/metrics", timeout=5).text
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: make test installs the Debian prometheus package"
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
