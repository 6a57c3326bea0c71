"""A fleet of real headless supervisors on this machine, each with its own twin.

Each device is ``python -m service`` with ``TWINFER_SERVE=0`` (no gunicorn, no workers), its
own store, and azure-iot-device connecting over TLS MQTT to its own mosquitto, where a twin
emulator answers as IoT Hub would (``tests/support``).

One broker per device, not one shared broker: IoT Hub scopes the twin topics
(``$iothub/twin/res/...``, ``$iothub/twin/PATCH/properties/desired/...``) by the connection's
identity, so on one plain broker every device would receive every other device's twin
responses and desired patches, and the emulator could not tell who sent a GET. Mosquitto's
per-listener ``mount_point`` could separate them, but it would mean a listener per device
anyway (the SDK always dials port 8883, so devices differ by loopback address) and a second
emulator that rewrites topics; a broker per device reuses the tested broker and emulator
unchanged and isolates the devices by construction, for about 10 MB of RSS and well under a
second of CPU per broker over a whole run (measured with 20 devices).

Every device starts from a copy of one template store, in which a headless supervisor has
installed bundle 1.0.0 from the blob store (so it keeps that bundle as a delta base, as a
device in the field would); each emulator starts with the desired document the template
handled, so a device comes up active on 1.0.0 with nothing to do.
"""
from __future__ import annotations

import shutil
import signal
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Callable

from tests.support.local_twin import LocalTwinFiles, is_active
from tests.support.mosquitto import Mosquitto, pick_address
from tests.support.service_process import ServiceProcess
from tests.support.tls import TlsFiles, issue_server_cert
from tests.support.twin_emulator import TwinEmulator

# Any base64 key: the emulator's broker does not check the SAS token the SDK derives from it.
DEVICE_KEY = "ZmxlZXQtYmVuY2gtc2hhcmVkLWFjY2Vzcy1rZXkhIQ=="


@dataclass
class Device:
    device_id: str
    broker: Mosquitto
    hub: TwinEmulator
    service: ServiceProcess

    @property
    def model(self) -> dict:
        """The ``model`` section the device last reported."""
        return self.hub.reported.get("model") or {}

    @property
    def active_version(self) -> str | None:
        """The version the device reports active, once the state says so."""
        model = self.model
        return (model.get("active") or {}).get("version") if model.get("state") == "active" else None


def headless_env(report_interval: float) -> dict[str, str]:
    return {"TWINFER_SERVE": "0", "TWINFER_REPORT_INTERVAL": str(report_interval), "TWINFER_TWIN_RETRY_SECONDS": "1"}


def prepare_template(store: Path, desired: dict, version: str, report_interval: float, timeout: float = 300) -> int:
    """Install ``desired`` into a fresh store with one headless supervisor on the local twin;
    returns the desired ``$version`` it handled (the fleet's twins start from it)."""
    store.parent.mkdir(parents=True, exist_ok=True)
    with ServiceProcess.start(store, workers=1, extra_env=headless_env(report_interval), wait_ready=False):
        twin = LocalTwinFiles(store)
        handled = twin.set_desired(desired)
        twin.wait_reported(is_active(version), timeout=timeout)
    return handled


class Fleet:
    """N devices started from ``template``; a context manager that stops every process it started."""

    def __init__(
        self, root: Path, template: Path, size: int, desired: dict, desired_version: int, report_interval: float
    ) -> None:
        self.root = root
        self.template = template
        self.size = size
        self.desired = desired
        self.desired_version = desired_version
        self.report_interval = report_interval
        self.devices: list[Device] = []
        self._stack = ExitStack()

    def __enter__(self) -> "Fleet":
        try:
            addresses = [pick_address() for _ in range(self.size)]
            tls = issue_server_cert(self.root / "tls", *addresses)
            for index, address in enumerate(addresses):
                self.devices.append(self._start_device(index, address, tls))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start_device(self, index: int, address: str, tls: TlsFiles) -> Device:
        device_id = f"dev-{index:03d}"
        home = self.root / device_id
        store = home / "store"
        shutil.copytree(self.template, store, symlinks=True)
        broker = self._stack.enter_context(Mosquitto(home / "broker", tls, address))
        hub = self._stack.enter_context(TwinEmulator(address, broker.plain_port, self.desired, self.desired_version))
        env = {
            **headless_env(self.report_interval),
            "IOTHUB_DEVICE_CONNECTION_STRING": (
                f"HostName=fleet.azure-devices.net;DeviceId={device_id};ModuleId=twinfer;"
                f"SharedAccessKey={DEVICE_KEY};GatewayHostName={address}"
            ),
            "TWINFER_IOTHUB_CA_FILE": str(tls.ca_file),
        }
        service = self._stack.enter_context(ServiceProcess.start(store, workers=1, extra_env=env, wait_ready=False))
        return Device(device_id, broker, hub, service)

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """SIGTERM every supervisor at once (each stops in about a second), then unwind:
        supervisors reaped, emulators disconnected, brokers stopped; stores removed."""
        for device in self.devices:
            if device.service.proc.poll() is None:
                device.service.proc.send_signal(signal.SIGTERM)
        self._stack.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_all(self, predicate: Callable[[Device], bool], timeout: float) -> None:
        """Until ``predicate`` holds for every device; raises on timeout or a dead supervisor."""
        started = time.monotonic()
        pending = list(self.devices)
        while pending:
            for device in pending:
                code = device.service.proc.poll()
                if code is not None:
                    raise RuntimeError(f"{device.device_id} exited with {code}:\n{device.service.log()[-3000:]}")
            pending = [d for d in pending if not predicate(d)]
            if pending and time.monotonic() - started > timeout:
                raise TimeoutError(f"{len(pending)} devices not there after {timeout:.0f} s; first: {pending[0].model}")
            time.sleep(0.1)
