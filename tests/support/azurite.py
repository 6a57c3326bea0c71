"""Run a real Azure Blob Storage emulator (Azurite, from ``.tools/azurite``) for the tests.

``ops/install-tools.sh`` installs Azurite 3.35 locally under ``<project>/.tools/azurite``
(``make tools``). Usage::

    with Azurite.start(tmp_path) as azurite:
        azurite.upload("models", "bundle.tar", data)
        url = azurite.sas_url("models", "bundle.tar")   # what the supervisor downloads
"""
from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qsl, quote, urlencode

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, ContentSettings, generate_blob_sas

from tests.support.paths import PROJECT_ROOT
from tests.support.service_process import free_port

AZURITE_BIN = PROJECT_ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"

ACCOUNT_NAME = "devstoreaccount1"
# Azurite's published development account key (documented by Microsoft for the emulator and
# identical in every Azurite install); it is NOT a secret and grants access to nothing real.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteNotInstalled(RuntimeError):
    pass


class Azurite:
    """A running ``azurite-blob`` process on 127.0.0.1 and helpers to fill it and sign URLs."""

    def __init__(self, proc: subprocess.Popen, port: int, location: Path, log_path: Path, startup_seconds: float):
        self.proc = proc
        self.port = port
        self.location = location
        self.log_path = log_path
        self.startup_seconds = startup_seconds  # from spawn to the port answering
        self.account_name = ACCOUNT_NAME
        self.account_url = f"http://127.0.0.1:{port}/{ACCOUNT_NAME}"
        self.connection_string = (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};BlobEndpoint={self.account_url};"
        )
        self.service = BlobServiceClient.from_connection_string(self.connection_string)

    # -- lifecycle ---------------------------------------------------------------------------------

    @classmethod
    @contextmanager
    def start(cls, tmp_dir: Path, timeout: float = 30.0) -> Iterator["Azurite"]:
        if not AZURITE_BIN.exists():
            raise AzuriteNotInstalled(f"{AZURITE_BIN} is missing: run ops/install-tools.sh (make tools)")
        if shutil.which("node") is None:
            raise AzuriteNotInstalled("node is not on PATH: run ops/install-tools.sh (make tools)")
        location = Path(tmp_dir) / "azurite"
        location.mkdir(parents=True, exist_ok=True)
        azurite = None
        # free_port() releases the port before Azurite binds it; retry if another process took it.
        for attempt in range(3):
            port = free_port()
            log_path = location / f"azurite-{port}.log"
            started = time.monotonic()
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [
                        str(AZURITE_BIN),
                        "--blobHost", "127.0.0.1",
                        "--blobPort", str(port),
                        "--inMemoryPersistence",
                        "--disableTelemetry",
                        "--skipApiVersionCheck",
                        "--loose",
                        # No --location: Azurite 3.35 exits with "The --inMemoryPersistence option
                        # is not supported when the --location option is set". Its workspace
                        # defaults to the cwd, so cwd=location keeps anything it writes in tmp_dir.
                    ],
                    cwd=location,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                _wait_port(proc, port, timeout, log_path)
            except _ExitedEarly:
                if attempt < 2 and "EADDRINUSE" in log_path.read_text(errors="replace"):
                    continue
                raise RuntimeError(f"azurite exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
            except BaseException:
                _stop(proc)
                raise
            azurite = cls(proc, port, location, log_path, time.monotonic() - started)
            break
        assert azurite is not None
        try:
            yield azurite
        finally:
            azurite.stop()

    def stop(self, timeout: float = 10.0) -> int:
        self.service.close()
        return _stop(self.proc, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    # -- content -----------------------------------------------------------------------------------

    def upload(self, container: str, name: str, data: bytes) -> str:
        """Create ``container`` if needed and put ``data`` as block blob ``name`` (overwriting).

        Sets Content-MD5 like real Blob Storage uploads do. Returns the blob's ETag as the
        HTTP ``ETag`` header shows it (quoted).
        """
        container_client = self.service.get_container_client(container)
        try:
            container_client.create_container()
        except ResourceExistsError:
            pass
        result = container_client.get_blob_client(name).upload_blob(
            data,
            overwrite=True,
            content_settings=ContentSettings(
                content_type="application/octet-stream",
                content_md5=bytearray(hashlib.md5(data).digest()),
            ),
        )
        return _quoted(result["etag"])

    def replace(self, container: str, name: str, data: bytes) -> str:
        """Overwrite blob ``name`` with new content; returns the new (different) ETag."""
        return self.upload(container, name, data)

    # -- URLs --------------------------------------------------------------------------------------

    def blob_url(self, container: str, name: str) -> str:
        return f"{self.account_url}/{quote(container)}/{quote(name)}"

    def sas_url(self, container: str, name: str, expiry_seconds: float = 3600, start_offset: float = -60) -> str:
        """A read-only SAS URL valid from now+start_offset to now+expiry_seconds."""
        now = datetime.now(timezone.utc)
        token = generate_blob_sas(
            account_name=ACCOUNT_NAME,
            container_name=container,
            blob_name=name,
            account_key=ACCOUNT_KEY,
            permission=BlobSasPermissions(read=True),
            start=now + timedelta(seconds=start_offset),
            expiry=now + timedelta(seconds=expiry_seconds),
        )
        return f"{self.blob_url(container, name)}?{token}"

    def expired_sas_url(self, container: str, name: str) -> str:
        """A correctly signed read SAS whose expiry is an hour in the past."""
        return self.sas_url(container, name, expiry_seconds=-3600, start_offset=-7200)

    def tampered_sas_url(self, container: str, name: str) -> str:
        """A valid, unexpired SAS whose ``sig`` has one bit flipped (still well-formed base64)."""
        url = self.sas_url(container, name)
        base, query = url.split("?", 1)
        params = parse_qsl(query, keep_blank_values=True)
        tampered = []
        for key, value in params:
            if key == "sig":
                raw = bytearray(base64.b64decode(value))
                raw[0] ^= 0x01
                value = base64.b64encode(bytes(raw)).decode()
            tampered.append((key, value))
        return f"{base}?{urlencode(tampered, quote_via=quote)}"


class _ExitedEarly(Exception):
    pass


def _quoted(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def _wait_port(proc: subprocess.Popen, port: int, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _ExitedEarly()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"azurite did not listen on {port} in {timeout}s:\n{log_path.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
