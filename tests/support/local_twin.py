"""Drive the embedded default's local twin files the way an operator (or IoT Hub) would."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from tests.support.waiting import wait_until
from twinfer.manifest import write_atomic


class LocalTwinFiles:
    def __init__(self, store: Path) -> None:
        self.directory = store / "twin"
        self.version = 0

    def set_desired(self, document: dict[str, Any], version: int | None = None) -> int:
        """Replace the whole desired document, with the next ``$version``."""
        self.version = version if version is not None else self.version + 1
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.directory / "desired.json", json.dumps({**document, "$version": self.version}).encode())
        return self.version

    def reported(self) -> dict[str, Any]:
        try:
            return json.loads((self.directory / "reported.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def wait_reported(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> dict[str, Any]:
        def matching() -> dict[str, Any] | None:
            reported = self.reported()
            return reported if predicate(reported) else None

        return wait_until(matching, "reported properties matching", timeout, interval=0.05,
                          ignoring=(KeyError, TypeError))


def model_status(reported: dict[str, Any]) -> dict[str, Any]:
    return reported.get("model") or {}


def is_active(version: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: model_status(r)["state"] == "active" and model_status(r)["active"]["version"] == version


def failed_with(reason: str, desired_version: int) -> Callable[[dict[str, Any]], bool]:
    return lambda r: (
        model_status(r)["state"] == "failed"
        and model_status(r)["desired_version"] == desired_version
        and model_status(r)["last_error"]["reason"] == reason
    )
