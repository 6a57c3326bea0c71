"""Pick the twin backing this process from its environment."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from service.twin.azure import AzureTwin
from service.twin.base import TwinSource
from twinfer.settings_table import read
from twinfer.store_layout import StoreLayout


def create_twin_source(store: Path, env: Mapping[str, str]) -> TwinSource:
    """IoT Edge when its runtime's variables are set, IoT Hub when a connection string is given,
    else the local files under ``store/twin`` (the embedded default: no cloud needed).

    On IoT Edge the SDK reads the IOTEDGE_* variables from ``os.environ`` itself; ``env`` only decides.
    """
    retry = read("TWINFER_TWIN_RETRY_SECONDS", env)  # the SDK's reconnect interval
    if env.get("IOTEDGE_WORKLOADURI") and env.get("IOTEDGE_MODULEID"):
        return AzureTwin.from_edge_environment(sdk_retry_interval=retry)
    connection_string = read("IOTHUB_MODULE_CONNECTION_STRING", env) or read("IOTHUB_DEVICE_CONNECTION_STRING", env)
    if connection_string:
        return AzureTwin.from_connection_string(
            connection_string, read("TWINFER_IOTHUB_CA_FILE", env), sdk_retry_interval=retry
        )
    from service.twin.local import LocalTwin

    return LocalTwin(StoreLayout(store).twin)
