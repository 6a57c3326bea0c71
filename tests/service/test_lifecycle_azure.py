"""The lifecycle over real transports: the supervisor's azure-iot-device client through a
TLS mosquitto broker and an IoT Hub twin emulator, bundles from Azurite via SAS URLs."""
from __future__ import annotations

import base64
import time
from typing import Callable, Iterator

import pytest
import requests

from tests.support.azurite import Azurite
from tests.support.bundles import face_bundle, model_desired
from tests.support.mosquitto import Mosquitto, pick_address
from tests.support.service_process import ServiceProcess
from tests.support.tls import issue_server_cert
from tests.support.twin_emulator import TwinEmulator
from tests.support.waiting import wait_until
from twinfer.manifest import read_default

pytestmark = pytest.mark.processes  # every test here starts processes

KEY = base64.b64encode(b"twinfer-test-shared-access-key!!").decode()
CONTAINER = "models"


def _status(reported: dict) -> dict:
    return reported.get("model") or {}


def active(version: str) -> Callable[[dict], bool]:
    return lambda r: _status(r).get("state") == "active" and (_status(r).get("active") or {}).get("version") == version


def failed(reason: str, desired_version: int) -> Callable[[dict], bool]:
    return lambda r: (
        _status(r).get("state") == "failed"
        and _status(r).get("desired_version") == desired_version
        and (_status(r).get("last_error") or {}).get("reason") == reason
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[tuple]:
    root = tmp_path_factory.mktemp("azure")
    address = pick_address()
    tls = issue_server_cert(root / "tls", address)
    with Azurite.start(root / "azurite") as blobs, Mosquitto(root / "broker", tls, address) as broker:
        with TwinEmulator(address, broker.plain_port, {}, 1) as hub:
            env = {
                "IOTHUB_DEVICE_CONNECTION_STRING": (
                    f"HostName=testhub.azure-devices.net;DeviceId=gw1;ModuleId=twinfer;"
                    f"SharedAccessKey={KEY};GatewayHostName={address}"
                ),
                "TWINFER_IOTHUB_CA_FILE": str(tls.ca_file),
                "TWINFER_TWIN_RETRY_SECONDS": "1",
                "TWINFER_REPORT_INTERVAL": "0.1",
            }
            with ServiceProcess.start(root / "store", workers=1, extra_env=env) as device:
                hub.wait_reported(active("1.0.0"), timeout=30)
                yield device, hub, blobs, broker


def test_patch_over_mqtt_downloads_from_azurite_and_reports_active(world):
    device, hub, blobs, _ = world
    bundle = face_bundle()
    blobs.upload(CONTAINER, "face-2.0.0.zip", bundle.data)
    hub.set_desired(model_desired("face", "2.0.0", blobs.sas_url(CONTAINER, "face-2.0.0.zip"), bundle))
    reported = hub.wait_reported(active("2.0.0"), timeout=60)
    assert reported["LatestAIModelFileName"] == "face-2.0.0.zip"
    assert read_default(device.store).version == "2.0.0"
    message = hub.wait_output_message(lambda m: m.properties.get("$.on") == "DLModelOutput", timeout=20).json()
    assert message["local_model_path"] == "models/face/2.0.0/blazeface.tflite"
    assert message["local_labelmap_path"] == "models/face/2.0.0/labels.txt"
    assert "sig=" not in device.log()


@pytest.mark.parametrize("kind", ["expired", "tampered"])
def test_bad_sas_fails_fast_and_keeps_serving(world, kind):
    device, hub, blobs, _ = world
    bundle = face_bundle("onnx")
    blobs.upload(CONTAINER, f"face-{kind}.zip", bundle.data)
    url = getattr(blobs, f"{kind}_sas_url")(CONTAINER, f"face-{kind}.zip")
    before = read_default(device.store)
    version = hub.set_desired(model_desired("face", kind, url, bundle))
    reported = hub.wait_reported(failed("forbidden", version), timeout=30)
    assert "403" in _status(reported)["last_error"]["message"]
    assert "sig=" not in str(reported)
    assert read_default(device.store) == before
    assert requests.get(device.url + "/readyz", timeout=5).status_code == 200


def test_desired_change_while_broker_is_down_is_applied_once_after_reconnect(world):
    device, hub, blobs, broker = world
    bundle = face_bundle()
    url = blobs.sas_url(CONTAINER, "face-2.0.0.zip")
    broker.stop()
    # roll back to the bundled model by twin while the device is offline: the patch is lost
    version = hub.set_desired({"model": {"name": "ssd-mobilenetv2-oidv4", "version": "1.0.0", "url": url, "sha256": bundle.sha256}})
    broker.start()
    reported = hub.wait_reported(active("1.0.0"), timeout=60)
    assert _status(reported)["state"] == "active"
    manifest = read_default(device.store)
    assert (manifest.name, manifest.version) == ("ssd-mobilenetv2-oidv4", "1.0.0")
    assert _status(reported)["active"]["generation"] == manifest.generation
    # another reconnect delivers the same $version again (a fresh GET): not acted on twice
    gets = hub.get_requests
    broker.restart()
    wait_until(lambda: hub.get_requests != gets, "the client fetched the twin after reconnecting", 30)
    time.sleep(1.0)  # time to act on it, were it going to
    assert read_default(device.store).generation == manifest.generation
    assert hub.reported["model"]["active"]["generation"] == manifest.generation
    assert hub.reported["model"]["desired_version"] == version
