"""workers.inference: the options both transports parse, and which model a request gets."""
from __future__ import annotations

import pytest

from twinfer.engines import EngineOptions
from twinfer.errors import BadParameter, ModelNotFound, NoModel
from workers.inference import MAX_DETECTIONS_LIMIT, DetectOptions, InferenceHandler
from workers.settings import WorkerSettings


@pytest.mark.parametrize(("threshold", "max_detections", "expected"), [
    (None, None, DetectOptions()),
    ("0.25", "7", DetectOptions(0.25, 7)),  # a query string
    (0.25, 7, DetectOptions(0.25, 7)),  # v2 parameters (JSON numbers)
    ("1", str(MAX_DETECTIONS_LIMIT), DetectOptions(1.0, MAX_DETECTIONS_LIMIT)),
])
def test_options_from_either_transport(threshold, max_detections, expected):
    assert DetectOptions.parse(threshold, max_detections) == expected


@pytest.mark.parametrize(("threshold", "max_detections", "message"), [
    ("high", None, "parameters.threshold must be a number between 0 and 1, got 'high'"),
    (True, None, "parameters.threshold must be a number between 0 and 1, got True"),
    (1.5, None, "parameters.threshold must be between 0 and 1, got 1.5"),
    (None, "0", "parameters.max_detections must be an integer 1..1000, got '0'"),
    (None, 2.0, "parameters.max_detections must be an integer 1..1000, got 2.0"),
    (None, False, "parameters.max_detections must be an integer 1..1000, got False"),
])
def test_bad_options_name_the_field_as_the_client_wrote_it(threshold, max_detections, message):
    with pytest.raises(BadParameter) as caught:
        DetectOptions.parse(threshold, max_detections, "parameters.")
    assert caught.value.message == message


class _Manifest:
    name, version = "face", "2"


class _Serving:
    manifest = _Manifest()


class _Holder:
    def __init__(self, current):
        self.current = current


def test_the_model_a_request_names_must_be_the_one_serving(tmp_path):
    settings = WorkerSettings(store=tmp_path, max_body_bytes=10**6, max_image_pixels=10**7, engine=EngineOptions())
    handler = InferenceHandler(_Holder(_Serving()), settings)
    assert handler.current().manifest.name == "face"
    assert handler.current("face", "2").manifest.version == "2"
    with pytest.raises(ModelNotFound, match="unknown model 'body'; this server serves 'face'"):
        handler.current("body")
    with pytest.raises(ModelNotFound, match="model 'face' has no version '1'; the active version is '2'"):
        handler.current("face", "1")
    with pytest.raises(NoModel):
        InferenceHandler(_Holder(None), settings).current("face")
