"""The module twin through azure-iot-device's sync client: IoT Edge (edgeHub) or IoT Hub directly.

What the SDK does not do for us, and this class does:

* the first connect is not retried (it raises), so a background loop retries it with capped,
  jittered exponential backoff; ``start`` returns at once, and the supervisor serves its
  current model while the hub is unreachable;
* a twin request whose response is lost never completes (the SDK has no timeout for it), so
  every call runs under a deadline and is retried;
* desired patches sent while the device was offline are never delivered, so after every
  (re)connect the whole document is fetched, off the SDK's handler thread, and delivered as
  such. The SDK's own refresh (``ensure_desired_properties``) is turned off: it hands the whole
  document over as if it were a patch, which would hide deleted keys.

Connection strings and SAS tokens are never logged.
"""
from __future__ import annotations

import json
import logging
import random
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Callable

from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient, Message

from service.twin.base import DesiredHandler, TwinError

log = logging.getLogger("twinfer.twin")

Client = IoTHubModuleClient | IoTHubDeviceClient


def _sdk_options(sdk_retry_interval: int) -> dict[str, Any]:
    return {
        "connection_retry": True,
        "connection_retry_interval": sdk_retry_interval,
        "ensure_desired_properties": False,
    }


def _has_module_id(connection_string: str) -> bool:
    return any(part.partition("=")[0].strip() == "ModuleId" for part in connection_string.split(";"))


def _describe(exc: BaseException) -> str:
    """The SDK wraps the telling error (TLS, refused, ...) as the cause of a generic one."""
    text = f"{type(exc).__name__}: {exc}"
    if exc.__cause__ is not None:
        text += f" ({type(exc.__cause__).__name__}: {exc.__cause__})"
    return text


def _version(document: dict) -> int | None:
    version = document.get("$version")
    return version if isinstance(version, int) and not isinstance(version, bool) else None


class AzureTwin:
    def __init__(
        self,
        client: Client,
        kind: str,
        *,
        operation_timeout: float = 30.0,
        retry_base: float = 1.0,
        retry_cap: float = 60.0,
        watch_interval: float = 60.0,
    ) -> None:
        """``watch_interval``: how often the loop checks that the SDK has not given up reconnecting
        (it stops after an error it deems permanent, such as an edgeHub refusing a token while it restarts)."""
        self.kind = kind
        self._client = client
        self._timeout = operation_timeout
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._watch_interval = watch_interval
        self._on_desired: DesiredHandler | None = None
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._refresh = threading.Event()
        self._patches_enabled = False
        # Patches arrive on the SDK's handler thread, whole documents on ours: under this lock, a
        # whole document fetched before a newer patch is refetched, and a patch it already holds is skipped.
        self._deliver_lock = threading.Lock()
        self._patches_delivered = 0
        self._last_patch_version: int | None = None
        self._full_version: int | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_edge_environment(cls, *, sdk_retry_interval: int = 10, **options: Any) -> "AzureTwin":
        """The SDK reads the IOTEDGE_* variables from ``os.environ`` and asks the workload API for
        the edgeHub trust bundle and for token signatures."""
        client = IoTHubModuleClient.create_from_edge_environment(**_sdk_options(sdk_retry_interval))
        return cls(client, "azure-edge", **options)

    @classmethod
    def from_connection_string(
        cls, connection_string: str, ca_file: Path | None = None, *, sdk_retry_interval: int = 10, **options: Any
    ) -> "AzureTwin":
        """A module client when the string names a ModuleId, else a device client. ``ca_file`` is the
        root to trust when a gateway (``GatewayHostName=`` in the string) presents a private certificate."""
        client_type = IoTHubModuleClient if _has_module_id(connection_string) else IoTHubDeviceClient
        sdk_options = _sdk_options(sdk_retry_interval)
        if ca_file is not None:
            sdk_options["server_verification_cert"] = Path(ca_file).read_text(encoding="utf-8")
        try:
            client = client_type.create_from_connection_string(connection_string, **sdk_options)
        except ValueError as exc:  # the SDK's messages never quote the string; keep it that way
            raise TwinError(f"the IoT Hub connection string is not usable: {exc}") from None
        return cls(client, "azure-connection-string", **options)

    def start(self, on_desired: DesiredHandler) -> None:
        """Returns at once; a background thread connects and delivers (see the module docstring).
        ``on_desired`` runs on the SDK's or this class's threads, one call at a time: keep it quick."""
        self._on_desired = on_desired
        self._client.on_connection_state_change = self._on_connection_state_change
        self._refresh.set()
        self._thread = threading.Thread(target=self._run, name="azure-twin", daemon=True)
        self._thread.start()

    def report(self, patch: dict) -> None:
        self._call("reported-properties patch", self._client.patch_twin_reported_properties, patch)

    def send_event(self, output: str, payload: dict) -> None:
        """Raises TwinError when the message could not be sent; device clients have no outputs."""
        if not isinstance(self._client, IoTHubModuleClient):
            log.info("not a module identity: no output %r to send to; skipping the message", output)
            return
        message = Message(json.dumps(payload), content_encoding="utf-8", content_type="application/json")
        self._call(f"message to output {output!r}", self._client.send_message_to_output, message, output)

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        try:
            self._call("shutdown", self._client.shutdown)
        except TwinError as exc:
            log.warning("twin client shutdown: %s", exc)
        if self._thread is not None:
            self._thread.join(self._timeout + 5)

    def _on_connection_state_change(self) -> None:
        """Runs on the SDK's handler thread: only flag the refresh, the loop thread does it."""
        if self._client.connected:
            log.info("twin connected (%s); fetching the whole desired document", self.kind)
            self._refresh.set()
            self._wake.set()
        elif not self._closed.is_set():
            log.warning("twin disconnected (%s); reconnecting", self.kind)

    def _run(self) -> None:
        failures = 0
        while not self._closed.is_set():
            self._wake.clear()
            try:
                self._step()
            except Exception as exc:  # transient by assumption: a twin outage must not stop the service
                if self._closed.is_set():
                    return
                failures += 1
                delay = self._backoff(failures)
                log.warning("twin (%s): %s; retrying in %.1f s", self.kind, _describe(exc), delay)
                self._closed.wait(delay)
                continue
            failures = 0
            self._wake.wait(self._watch_interval)

    def _step(self) -> None:
        if not self._client.connected:
            self._client.connect()
        if not self._patches_enabled:
            self._client.on_twin_desired_properties_patch_received = self._on_patch  # subscribes
            self._patches_enabled = True
        if self._refresh.is_set():
            self._refresh.clear()
            try:
                self._fetch_whole_document()
            except BaseException:
                self._refresh.set()
                raise

    def _fetch_whole_document(self) -> None:
        with self._deliver_lock:
            patches_before = self._patches_delivered
        twin = self._call("twin GET", self._client.get_twin)
        desired = dict(twin.get("desired") or {})
        version = _version(desired)
        with self._deliver_lock:
            overtaken = (
                self._patches_delivered != patches_before
                and version is not None
                and self._last_patch_version is not None
                and self._last_patch_version > version
            )
            if overtaken:  # a newer patch was delivered while this GET was in flight: this copy is stale
                self._refresh.set()
                self._wake.set()
                return
            self._full_version = version
            self._deliver(desired, True)

    def _on_patch(self, patch: dict) -> None:
        version = _version(patch)
        with self._deliver_lock:
            if version is not None and self._full_version is not None and version <= self._full_version:
                log.debug("desired patch $version %s is already in the whole document; skipped", version)
                return
            self._patches_delivered += 1
            self._last_patch_version = version
            self._deliver(dict(patch), False)

    def _deliver(self, desired: dict, whole: bool) -> None:
        log.info("desired properties $version %s (%s)", desired.get("$version"), "whole document" if whole else "patch")
        assert self._on_desired is not None
        try:
            self._on_desired(desired, whole)
        except Exception:
            log.exception("the desired-properties handler failed")

    def _call(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        """Run an SDK call under a deadline. A call that outlives it is abandoned on its daemon thread:
        the SDK offers no way to cancel a request whose response never comes."""
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(function(*args))
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, name="azure-twin-call", daemon=True).start()
        try:
            return future.result(self._timeout)
        except FutureTimeout:
            raise TwinError(f"{what}: no answer from the hub in {self._timeout:g} s") from None
        except Exception as exc:
            raise TwinError(f"{what} failed: {_describe(exc)}") from exc

    def _backoff(self, failures: int) -> float:
        """Exponential and capped, with jitter so a fleet does not reconnect in lockstep after an outage."""
        ceiling = min(self._retry_cap, self._retry_base * 2 ** min(failures - 1, 32))
        return random.uniform(ceiling / 2, ceiling)
