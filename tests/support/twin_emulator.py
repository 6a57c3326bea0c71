"""A tiny IoT Hub twin service, speaking the documented MQTT twin topics through a real broker.

It answers the client's requests:

* ``$iothub/twin/GET/?$rid=<rid>`` -> ``$iothub/twin/res/200/?$rid=<rid>`` with
  ``{"desired": {..., "$version": v}, "reported": {..., "$version": rv}}``;
* ``$iothub/twin/PATCH/properties/reported/?$rid=<rid>`` -> merged (null deletes), then
  ``$iothub/twin/res/204/?$rid=<rid>&$version=<rv>``;

publishes desired patches on ``$iothub/twin/PATCH/properties/desired/?$version=<v>`` and
records what modules send to their outputs (``devices/<d>/modules/<m>/messages/events/<props>``).

Responses and patches go out at QoS 0, like the hub's: a patch sent while the device is offline is
never delivered (the device must GET the whole twin when it reconnects). Built for one device
client per broker.
"""
from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qsl

import paho.mqtt.client as mqtt

_NEW_CLIENT = re.compile(r"New client connected from \S+ as (?P<client_id>\S+) \(")
_EVENTS = re.compile(r"^devices/(?P<device>[^/]+)/(?:modules/(?P<module>[^/]+)/)?messages/events/(?P<props>.*)$")


def merge_patch(document: dict, patch: dict) -> dict:
    merged = copy.deepcopy(document)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_patch(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclass(frozen=True)
class OutputMessage:
    topic: str
    device_id: str
    module_id: str | None
    properties: dict[str, str]  # "$.on" (output name), "$.ct", "$.ce", custom ones
    payload: bytes

    def json(self) -> Any:
        return json.loads(self.payload)


def _query(topic: str) -> dict[str, str]:
    return dict(parse_qsl(topic.partition("?")[2], keep_blank_values=True))


class TwinEmulator:
    def __init__(
        self,
        host: str,
        port: int,
        desired: dict | None = None,
        desired_version: int = 1,
        drop_first_get_per_session: bool = False,
    ) -> None:
        """``drop_first_get_per_session``: answer no GET that is the first since a client connected
        (the broker's log on ``$SYS/broker/log/N`` tells the emulator when one does)."""
        self.host = host
        self.port = port
        self.client_id = f"twin-emulator-{uuid.uuid4().hex[:8]}"
        self.drop_first_get_per_session = drop_first_get_per_session
        self._desired = dict(desired or {})
        self._desired_version = desired_version
        self._reported: dict = {}
        self._reported_version = 1
        self._cond = threading.Condition()
        self._drop_next_get = False
        self.get_requests = 0
        self.dropped_gets = 0
        self.sessions: list[str] = []  # client ids seen connecting, in order
        self.output_messages: list[OutputMessage] = []
        self._connected = threading.Event()
        # A persistent session: requests published while the emulator reconnects after a broker
        # restart are queued for it, as the hub would still answer them.
        self._mqtt = mqtt.Client(client_id=self.client_id, clean_session=False)
        self._mqtt.reconnect_delay_set(min_delay=1, max_delay=1)
        self._mqtt.on_connect = self._on_connect
        self._mqtt.on_disconnect = lambda client, userdata, rc: self._connected.clear()
        self._mqtt.on_message = self._on_message

    def __enter__(self) -> "TwinEmulator":
        self._mqtt.connect(self.host, self.port, keepalive=5)
        self._mqtt.loop_start()
        self.wait_connected()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._mqtt.disconnect()
        self._mqtt.loop_stop()

    def wait_connected(self, timeout: float = 10.0) -> None:
        if not self._connected.wait(timeout):
            raise TimeoutError("twin emulator not connected to the broker")

    # --- the test's side ---------------------------------------------------------------------

    @property
    def reported(self) -> dict:
        with self._cond:
            return {**copy.deepcopy(self._reported), "$version": self._reported_version}

    def set_desired(self, patch: dict) -> int:
        """Apply a desired patch as the service would, and notify the device (lost if it is offline)."""
        with self._cond:
            self._desired = merge_patch(self._desired, patch)
            self._desired_version += 1
            version = self._desired_version
        body = json.dumps({**patch, "$version": version})
        self._mqtt.publish(f"$iothub/twin/PATCH/properties/desired/?$version={version}", body, qos=0)
        return version

    def wait_reported(self, predicate: Callable[[dict], bool], timeout: float = 10.0) -> dict:
        def probe() -> dict | None:
            reported = self.reported
            return reported if predicate(reported) else None

        return self._wait(probe, timeout, lambda: f"reported properties: {self.reported!r}")

    def wait_output_message(self, predicate: Callable[[OutputMessage], bool], timeout: float = 10.0) -> OutputMessage:
        def probe() -> OutputMessage | None:
            return next((message for message in self.output_messages if predicate(message)), None)

        return self._wait(probe, timeout, lambda: f"output messages: {self.output_messages!r}")

    def _wait(self, probe: Callable[[], Any], timeout: float, describe: Callable[[], str]) -> Any:
        """Block until ``probe`` returns something other than None (state changes notify the condition)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (found := probe()) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"nothing matched after {timeout} s; {describe()}")
                self._cond.wait(remaining)
            return found

    # --- the broker's side -------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: dict, rc: int) -> None:
        if rc != mqtt.CONNACK_ACCEPTED:
            return
        client.subscribe([("$iothub/twin/#", 1), ("devices/#", 1), ("$SYS/broker/log/N", 0)])
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if topic.startswith("$SYS/broker/log/"):
            self._on_broker_log(msg.payload.decode(errors="replace"))
        elif topic.startswith("$iothub/twin/GET/"):
            self._on_get(_query(topic)["$rid"])
        elif topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            self._on_reported(_query(topic)["$rid"], json.loads(msg.payload or b"{}"))
        elif match := _EVENTS.match(topic):
            properties = dict(parse_qsl(match["props"], keep_blank_values=True))
            message = OutputMessage(topic, match["device"], match["module"], properties, msg.payload)
            with self._cond:
                self.output_messages.append(message)
                self._cond.notify_all()
        # anything else under $iothub/twin/ is our own traffic (responses, desired patches)

    def _on_broker_log(self, line: str) -> None:
        match = _NEW_CLIENT.search(line)
        if match and match["client_id"] != self.client_id:
            with self._cond:
                self.sessions.append(match["client_id"])
                self._drop_next_get = self.drop_first_get_per_session
                self._cond.notify_all()

    def _on_get(self, rid: str) -> None:
        with self._cond:
            self.get_requests += 1
            drop, self._drop_next_get = self._drop_next_get, False
            if drop:
                self.dropped_gets += 1
            body = json.dumps(
                {
                    "desired": {**self._desired, "$version": self._desired_version},
                    "reported": {**self._reported, "$version": self._reported_version},
                }
            )
            self._cond.notify_all()
        if not drop:
            self._mqtt.publish(f"$iothub/twin/res/200/?$rid={rid}", body, qos=0)

    def _on_reported(self, rid: str, patch: dict) -> None:
        with self._cond:
            self._reported = merge_patch(self._reported, patch)
            self._reported_version += 1
            version = self._reported_version
            self._cond.notify_all()
        self._mqtt.publish(f"$iothub/twin/res/204/?$rid={rid}&$version={version}", b"", qos=0)
