"""The Azure twin through the real SDK, a real broker (mosquitto, TLS) and a twin emulator.

Every broker gets its own loopback address (the SDK always dials port 8883); the SDK retries
every second and the twin's own deadlines are a few seconds, so outages resolve quickly.
"""
from __future__ import annotations

import base64
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import pytest
from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient

from service.twin.azure import AzureTwin
from service.twin.base import TwinError
from service.twin.factory import create_twin_source
from tests.support.mosquitto import Mosquitto, pick_address
from tests.support.tls import TlsFiles, issue_server_cert
from tests.support.twin_emulator import TwinEmulator
from tests.support.waiting import wait_until
from tests.support.workload_api import WorkloadApi

HUB = "testhub.azure-devices.net"
DEVICE = "dev1"
MODULE = "twinfer"
KEY = base64.b64encode(b"twinfer-test-shared-access-key!!").decode()
FAST = {"sdk_retry_interval": 1, "operation_timeout": 3.0, "retry_base": 0.2, "retry_cap": 1.0}
INITIAL_DESIRED = {"model": {"name": "detector", "version": "1.0.0"}, "inference": {"score_threshold": 0.5}}
INITIAL_VERSION = 7


def connection_string(gateway: str, module: bool = True) -> str:
    module_part = f"ModuleId={MODULE};" if module else ""
    return f"HostName={HUB};DeviceId={DEVICE};{module_part}SharedAccessKey={KEY};GatewayHostName={gateway}"


class Deliveries:
    """Records what the twin hands to the supervisor, for tests to wait on."""

    def __init__(self) -> None:
        self.items: list[tuple[dict, bool]] = []
        self._cond = threading.Condition()

    def __call__(self, desired: dict, whole: bool) -> None:
        with self._cond:
            self.items.append((desired, whole))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[dict, bool], bool], timeout: float = 15.0) -> tuple[dict, bool]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next((item for item in self.items if predicate(*item)), None)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching delivery in {timeout} s; got {self.items!r}")
                self._cond.wait(remaining)


def whole_at(version: int) -> Callable[[dict, bool], bool]:
    return lambda desired, whole: whole and desired.get("$version") == version


@dataclass
class Hub:
    broker: Mosquitto
    emulator: TwinEmulator
    tls: TlsFiles


@pytest.fixture
def hub(request: pytest.FixtureRequest, tmp_path) -> Iterator[Hub]:
    """Broker + emulator; parametrize indirectly with emulator options (e.g. dropping GETs)."""
    address = pick_address()
    tls = issue_server_cert(tmp_path / "tls", address)
    options = getattr(request, "param", {})
    with Mosquitto(tmp_path / "broker", tls, address) as broker:
        with TwinEmulator(address, broker.plain_port, INITIAL_DESIRED, INITIAL_VERSION, **options) as emulator:
            yield Hub(broker, emulator, tls)


@pytest.fixture
def twin(hub: Hub) -> Iterator[AzureTwin]:
    twin = AzureTwin.from_connection_string(connection_string(hub.broker.address), hub.tls.ca_file, **FAST)
    yield twin
    twin.close()


@pytest.fixture
def deliveries() -> Deliveries:
    return Deliveries()


@pytest.mark.processes
def test_start_delivers_the_whole_desired_document(twin: AzureTwin, deliveries: Deliveries) -> None:
    twin.start(deliveries)
    desired, whole = deliveries.wait_for(lambda desired, whole: True)
    assert whole is True
    assert desired == {**INITIAL_DESIRED, "$version": INITIAL_VERSION}
    assert twin.kind == "azure-connection-string"


@pytest.mark.processes
def test_desired_patch_is_delivered_as_a_patch(hub: Hub, twin: AzureTwin, deliveries: Deliveries) -> None:
    twin.start(deliveries)
    deliveries.wait_for(whole_at(INITIAL_VERSION))
    version = hub.emulator.set_desired({"inference": {"score_threshold": 0.7}, "model": None})
    desired, whole = deliveries.wait_for(lambda desired, whole: desired.get("$version") == version)
    assert (desired, whole) == ({"inference": {"score_threshold": 0.7}, "model": None, "$version": version}, False)


@pytest.mark.processes
def test_report_lands_in_reported_properties(hub: Hub, twin: AzureTwin, deliveries: Deliveries) -> None:
    twin.start(deliveries)
    deliveries.wait_for(whole_at(INITIAL_VERSION))
    twin.report({"a": {"b": 1}, "status": "ready"})
    hub.emulator.wait_reported(lambda reported: reported.get("a") == {"b": 1})
    twin.report({"status": None})  # null deletes, as on IoT Hub
    reported = hub.emulator.wait_reported(lambda reported: "status" not in reported)
    assert reported["a"] == {"b": 1}


@pytest.mark.processes
def test_change_made_while_offline_arrives_as_whole_document_after_reconnect(
    hub: Hub, twin: AzureTwin, deliveries: Deliveries
) -> None:
    twin.start(deliveries)
    deliveries.wait_for(whole_at(INITIAL_VERSION))
    hub.broker.stop()
    version = hub.emulator.set_desired({"model": {"name": "detector", "version": "2.0.0"}})  # the patch is lost
    hub.broker.start()
    desired, _ = deliveries.wait_for(whole_at(version))
    assert desired["model"] == {"name": "detector", "version": "2.0.0"}
    assert desired["inference"] == INITIAL_DESIRED["inference"]
    assert not [item for item in deliveries.items if not item[1] and item[0].get("$version") == version]
    # and the reconnected session still gets patches
    later = hub.emulator.set_desired({"inference": {"score_threshold": 0.9}})
    assert deliveries.wait_for(lambda desired, whole: desired.get("$version") == later)[1] is False


@pytest.mark.processes
def test_reconnects_after_the_sdk_gives_up(hub: Hub, deliveries: Deliveries, caplog) -> None:
    """The SDK stops reconnecting after a refusal it deems permanent ("not authorised", which
    edgeHub answers while it restarts); the twin's own watch brings the connection back."""
    twin = AzureTwin.from_connection_string(
        connection_string(hub.broker.address), hub.tls.ca_file, watch_interval=1.0, **FAST
    )
    try:
        twin.start(deliveries)
        deliveries.wait_for(whole_at(INITIAL_VERSION))
        hub.broker.restart(refuse_logins=True)
        wait_until(lambda: any(  # the SDK reports the refusal of its own reconnect, then stops
            record.name.startswith("azure.iot.device") and "UnauthorizedError" in record.getMessage()
            for record in list(caplog.records)
        ), "the SDK logged the refusal of its reconnect", 10, 0.05)
        version = hub.emulator.set_desired({"inference": {"score_threshold": 0.3}})  # lost: the emulator is out too
        hub.broker.restart()
        assert deliveries.wait_for(whole_at(version))[0]["inference"] == {"score_threshold": 0.3}
    finally:
        twin.close()


@pytest.mark.processes
@pytest.mark.parametrize("hub", [{"drop_first_get_per_session": True}], indirect=True)
def test_lost_first_get_response_is_retried(hub: Hub, twin: AzureTwin, deliveries: Deliveries) -> None:
    started = time.monotonic()
    twin.start(deliveries)
    deliveries.wait_for(whole_at(INITIAL_VERSION))
    assert hub.emulator.dropped_gets == 1
    assert hub.emulator.get_requests >= 2
    assert time.monotonic() - started >= FAST["operation_timeout"]  # the retry waited out the deadline


@pytest.mark.processes
def test_send_event_reaches_the_module_output(hub: Hub, twin: AzureTwin, deliveries: Deliveries) -> None:
    twin.start(deliveries)
    deliveries.wait_for(whole_at(INITIAL_VERSION))
    twin.send_event("modelReady", {"name": "detector", "version": "1.0.0"})
    message = hub.emulator.wait_output_message(lambda message: message.properties.get("$.on") == "modelReady")
    assert message.topic.startswith(f"devices/{DEVICE}/modules/{MODULE}/messages/events/")
    assert message.properties["$.ct"] == "application/json"
    assert message.properties["$.ce"] == "utf-8"
    assert message.json() == {"name": "detector", "version": "1.0.0"}


@pytest.mark.processes
def test_edge_environment_connects_through_the_workload_api(
    hub: Hub, tmp_path, monkeypatch: pytest.MonkeyPatch, deliveries: Deliveries
) -> None:
    with WorkloadApi(tmp_path / "workload.sock", hub.tls.ca_pem, MODULE) as workload:
        for name, value in workload.env(HUB, hub.broker.address, DEVICE).items():
            monkeypatch.setenv(name, value)
        twin = create_twin_source(tmp_path / "store", os.environ)
        try:
            assert twin.kind == "azure-edge"
            twin.start(deliveries)
            desired, whole = deliveries.wait_for(whole_at(INITIAL_VERSION))
            assert whole and desired["model"] == INITIAL_DESIRED["model"]
            twin.report({"edge": True})
            hub.emulator.wait_reported(lambda reported: reported.get("edge") is True)
        finally:
            twin.close()
        paths = [path.partition("?")[0] for _, path in workload.requests]
        assert "/trust-bundle" in paths
        assert f"/modules/{MODULE}/genid/{workload.generation_id}/sign" in paths
        assert f"{DEVICE}/{MODULE}" in hub.emulator.sessions


def test_unreachable_hub_neither_raises_nor_blocks_close(tmp_path, deliveries: Deliveries) -> None:
    address = pick_address()  # nothing listens there
    tls = issue_server_cert(tmp_path / "tls", address)
    twin = AzureTwin.from_connection_string(connection_string(address), tls.ca_file, **FAST)
    twin.start(deliveries)
    time.sleep(1.5)  # several failed attempts
    started = time.monotonic()
    twin.close()
    assert time.monotonic() - started < 5
    assert deliveries.items == []


class ScriptedClient:
    """Just enough of the SDK client to replay a race the real one produces only by chance."""

    connected = True

    def __init__(self, documents: list[dict], before_get: Callable[["ScriptedClient"], None]) -> None:
        self.documents = documents
        self.before_get = before_get
        self.on_connection_state_change = None
        self.on_twin_desired_properties_patch_received: Callable[[dict], None] | None = None

    def connect(self) -> None:
        pass

    def get_twin(self) -> dict:
        self.before_get(self)
        return {"desired": self.documents.pop(0), "reported": {"$version": 1}}

    def shutdown(self) -> None:
        pass


def test_stale_copies_never_overwrite_newer_desired_state(deliveries: Deliveries) -> None:
    def patch_overtakes_first_get(client: ScriptedClient) -> None:
        if len(client.documents) == 2:
            client.on_twin_desired_properties_patch_received({"b": 2, "$version": 9})

    client = ScriptedClient([{"a": 1, "$version": 8}, {"a": 1, "b": 2, "$version": 9}], patch_overtakes_first_get)
    twin = AzureTwin(client, "scripted", operation_timeout=3.0)  # type: ignore[arg-type]
    twin.start(deliveries)
    deliveries.wait_for(whole_at(9))
    client.on_twin_desired_properties_patch_received({"b": 2, "$version": 9})  # late duplicate: already applied
    client.on_twin_desired_properties_patch_received({"c": 3, "$version": 10})
    deliveries.wait_for(lambda desired, whole: desired["$version"] == 10)
    twin.close()
    assert deliveries.items == [
        ({"b": 2, "$version": 9}, False),  # the v8 copy fetched meanwhile is never delivered
        ({"a": 1, "b": 2, "$version": 9}, True),
        ({"c": 3, "$version": 10}, False),
    ]


@pytest.mark.processes
def test_secrets_stay_out_of_logs(hub: Hub, twin: AzureTwin, deliveries: Deliveries, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    twin.start(deliveries)
    deliveries.wait_for(whole_at(INITIAL_VERSION))
    twin.report({"a": 1})
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert KEY not in text and "SharedAccessSignature" not in text and "sig=" not in text


def test_factory_picks_the_source_from_the_environment(tmp_path) -> None:
    tls = issue_server_cert(tmp_path / "tls")
    module_env = {"IOTHUB_MODULE_CONNECTION_STRING": connection_string("127.0.0.1")}
    module = create_twin_source(tmp_path, {**module_env, "TWINFER_IOTHUB_CA_FILE": str(tls.ca_file)})
    device = create_twin_source(tmp_path, {"IOTHUB_DEVICE_CONNECTION_STRING": connection_string("127.0.0.1", False)})
    try:
        assert module.kind == device.kind == "azure-connection-string"
        assert isinstance(module._client, IoTHubModuleClient)
        assert isinstance(device._client, IoTHubDeviceClient)
        device.send_event("modelReady", {"x": 1})  # a device has no outputs: skipped, not sent
    finally:
        module.close()
        device.close()
    assert create_twin_source(tmp_path, {}).kind == "local"


def test_bad_connection_string_is_a_twin_error_without_the_key() -> None:
    with pytest.raises(TwinError) as caught:
        AzureTwin.from_connection_string(f"HostName={HUB};SharedAccessKey={KEY}")
    assert KEY not in str(caught.value)
