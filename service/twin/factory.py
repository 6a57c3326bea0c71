"""Pick the twin backing this process from its environment."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from service.twin.azure import AzureTwin
from service.twin.base import TwinSource
from workers.store_layout import StoreLayout


def create_twin_source(store: Path, env: Mapping[str, str]) -> TwinSource:
    """IoT Edge when its runtime's variables are set, IoT Hub when a connection string is given,
    else the local files under ``store/twin`` (the embedded default: no cloud needed).

    On IoT Edge the SDK reads the IOTEDGE_* variables from ``os.environ`` itself; ``env`` only decides.
    """
    retry = int(env.get("TWINFER_TWIN_RETRY_SECONDS") or 10)  # the SDK's reconnect interval
    if env.get("IOTEDGE_WORKLOADURI") and env.get("IOTEDGE_MODULEID"):
        return AzureTwin.from_edge_environment(sdk_retry_interval=retry)
    connection_string = env.get("IOTHUB_MODULE_CONNECTION_STRING") or env.get("IOTHUB_DEVICE_CONNECTION_STRING")
    if connection_string:
        ca_file = env.get("TWINFER_IOTHUB_CA_FILE")
        return AzureTwin.from_connection_string(
            connection_string, Path(ca_file) if ca_file else None, sdk_retry_interval=retry
        )
    from service.twin.local import LocalTwin

    return LocalTwin(StoreLayout(store).twin)
