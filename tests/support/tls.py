"""A throwaway CA and a server certificate, as files a broker and a client can load."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path

    @property
    def ca_pem(self) -> str:
        return self.ca_file.read_text()


def issue_server_cert(directory: Path, *hosts: str) -> TlsFiles:
    """A new CA and a certificate for ``localhost``, ``127.0.0.1`` and ``hosts`` (names or IPs):
    the SDK verifies the gateway's name, and tests dial brokers by loopback address."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", *hosts)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(files.ca_file))
    files.cert_file.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(files.key_file))
    return files
