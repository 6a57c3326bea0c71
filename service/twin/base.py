"""What the supervisor needs from a module twin, whichever backs it (IoT Hub, IoT Edge, local files)."""
from __future__ import annotations

from typing import Callable, Protocol

DesiredHandler = Callable[[dict, bool], None]
"""Called with the desired properties (including ``$version``) and whether they are the whole
document (True) or a patch to merge into the last one (False)."""


class TwinError(Exception):
    """A twin operation failed; the caller decides when to retry (reports are throttled)."""


class TwinSource(Protocol):
    kind: str  # "azure-edge", "azure-connection-string", "local"

    def start(self, on_desired: DesiredHandler) -> None:
        """Connect and begin delivering. Delivers the FULL desired document at start-up and after every
        reconnect (the SDK can lose the first response on a new session, and patches sent while offline
        arrive only as the whole document), and each patch as it arrives. Never raises for a transient
        outage: it keeps retrying."""

    def report(self, patch: dict) -> None:
        """Send a reported-properties patch; raises TwinError on failure."""

    def send_event(self, output: str, payload: dict) -> None:
        """Send a routing message to a module output (Azure); a no-op where there are no routes."""

    def close(self) -> None:
        ...
