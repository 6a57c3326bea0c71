"""A store the module cannot write (a bind mount Docker created owned by root) is said in one line.

The tests run as root, who writes anywhere; the supervisor is started without the
capabilities that bypass file permissions (``setpriv``), so a root-owned 0555 store is as
unwritable to it as to the container's uid 10001.
"""
from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.store_check import EXIT_STORE_UNWRITABLE
from tests.support.mosquitto import Mosquitto, pick_address
from tests.support.paths import PROJECT_ROOT
from tests.support.tls import issue_server_cert
from tests.support.twin_emulator import TwinEmulator

pytestmark = pytest.mark.processes  # every test here starts processes

WITHOUT_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
KEY = base64.b64encode(b"twinfer-test-shared-access-key!!").decode()


@pytest.fixture
def read_only_store(tmp_path) -> Path:
    store = tmp_path / "store"
    (store / "models").mkdir(parents=True)
    store.chmod(0o555)
    yield store
    store.chmod(0o755)


def supervise(store: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    environment.update(TWINFER_STORE=str(store), TWINFER_HTTP_HOST="127.0.0.1", TWINFER_HTTP_PORT="1", **env)
    return subprocess.run([*WITHOUT_OVERRIDE, sys.executable, "-m", "service"], cwd=PROJECT_ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_an_unwritable_store_is_one_clear_line_and_a_config_exit_code(read_only_store):
    done = supervise(read_only_store)
    output = done.stdout + done.stderr
    assert done.returncode == EXIT_STORE_UNWRITABLE, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "ERROR" in line]
    assert len(lines) == 1, output
    assert f"the model store {read_only_store} is not writable" in lines[0]
    assert f"chown -R {os.getuid()} <host directory>" in lines[0] and "TWINFER_STORE" in lines[0]


def test_an_unwritable_store_is_reported_on_an_iot_hub_twin(tmp_path, read_only_store):
    address = pick_address()
    tls = issue_server_cert(tmp_path / "tls", address)
    with Mosquitto(tmp_path / "broker", tls, address) as broker, TwinEmulator(address, broker.plain_port, {}, 1) as hub:
        done = supervise(
            read_only_store,
            IOTHUB_DEVICE_CONNECTION_STRING=(f"HostName=testhub.azure-devices.net;DeviceId=gw1;ModuleId=twinfer;"
                                             f"SharedAccessKey={KEY};GatewayHostName={address}"),
            TWINFER_IOTHUB_CA_FILE=str(tls.ca_file), TWINFER_TWIN_RETRY_SECONDS="1",
        )
        assert done.returncode == EXIT_STORE_UNWRITABLE, done.stdout + done.stderr
        model = hub.wait_reported(lambda r: r["model"]["last_error"]["reason"] == "store_not_writable")["model"]
        assert model["state"] == "failed" and "chown" in model["last_error"]["message"]
