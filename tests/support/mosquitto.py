"""A real mosquitto broker on a loopback address of its own, standing in for IoT Hub's MQTT endpoint.

The SDK always dials port 8883, so brokers differ by address (127.0.0.2-251), not by port.
It listens with TLS on 8883 for the SDK and in plain MQTT on a free port for the twin emulator,
keeps persistent sessions across restarts (the SDK connects with clean_session=False) and
publishes its log under ``$SYS/broker/log/`` so the emulator sees clients connect.
"""
from __future__ import annotations

import getpass
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.tls import TlsFiles

MOSQUITTO = "/usr/sbin/mosquitto"
SDK_PORT = 8883
_counter = itertools.count()


def _bindable(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def pick_address() -> str:
    """A loopback address whose port 8883 is free; spread by pid so parallel runs rarely collide."""
    for _ in range(250):
        address = f"127.0.0.{2 + (os.getpid() * 37 + next(_counter)) % 250}"
        if _bindable(address, SDK_PORT):
            return address
    raise RuntimeError("no loopback address with a free port 8883")


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def wait_accepting(address: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Mosquitto:
    def __init__(self, directory: Path, tls: TlsFiles, address: str) -> None:
        self.directory = directory
        self.tls = tls
        self.address = address
        self.port = SDK_PORT
        self.plain_port = free_port(address)
        self.persistence = directory / "persistence"
        self.log_path = directory / "mosquitto.log"
        self.config_path = directory / "mosquitto.conf"
        self.refuse_logins = False
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Mosquitto":
        shutil.rmtree(self.persistence, ignore_errors=True)
        self.persistence.mkdir(parents=True)
        self._write_config()
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _write_config(self) -> None:
        self.config_path.write_text(
            "\n".join(
                [
                    # as root, mosquitto would otherwise switch to a user that cannot write here
                    f"user {getpass.getuser()}",
                    "per_listener_settings false",
                    # refusing answers CONNECT with "not authorised", as edgeHub may while it restarts
                    f"allow_anonymous {'false' if self.refuse_logins else 'true'}",
                    "persistence true",
                    f"persistence_location {self.persistence}/",
                    f"log_dest file {self.log_path}",
                    "log_dest topic",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "log_timestamp_format %H:%M:%S",
                    f"listener {self.port} {self.address}",
                    f"cafile {self.tls.ca_file}",
                    f"certfile {self.tls.cert_file}",
                    f"keyfile {self.tls.key_file}",
                    f"listener {self.plain_port} {self.address}",
                    "",
                ]
            )
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_accepting(self.address, self.port)
            wait_accepting(self.address, self.plain_port)
        except OSError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start on {self.address}:\n{self.log()}") from None

    def stop(self) -> None:
        """SIGTERM, so mosquitto writes its persistence file, then reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, refuse_logins: bool = False) -> None:
        """Stop and start again with the same persistence (sessions and queued messages survive)."""
        self.stop()
        self.refuse_logins = refuse_logins
        self._write_config()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
