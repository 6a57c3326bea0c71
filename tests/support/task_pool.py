"""A real service (gunicorn, two workers) serving a pool of task models rolled out from a
local twin and a file server: the task tests' and the task benchmark's."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Iterator

import requests

from tests.support.bundles import Bundle, make_bundle
from tests.support.http_server import FileServer
from tests.support.local_twin import LocalTwinFiles
from tests.support.service_process import QUICK_REPORTS, ServiceProcess


@dataclass
class TaskPool:
    service: ServiceProcess
    twin: LocalTwinFiles
    files: FileServer
    bundles: dict[str, Bundle]
    versions: dict[str, str] = field(default_factory=dict)
    counter: count = field(default_factory=lambda: count(2))

    def entry(self, name: str, version: str) -> dict:
        bundle = self.bundles[name]
        return {"version": version, "url": self.files.url(f"/{name}.zip"), "sha256": bundle.sha256,
                "size": len(bundle.data)}

    def desire(self, versions: dict[str, str]) -> None:
        self.twin.set_desired({"models": {name: self.entry(name, v) for name, v in versions.items()}})
        self.versions = dict(versions)

    def wait_serving(self, timeout: float = 180) -> None:
        """Every desired model active at its version, rolled out to both workers."""
        def done(reported: dict) -> bool:
            models = reported.get("models") or {}
            for name, version in self.versions.items():
                state = models.get(name) or {}
                rollout = state.get("rollout") or {}
                if not (state.get("state") == "active" and state["active"]["version"] == version
                        and rollout.get("complete") and rollout.get("generation") == state["active"]["generation"]):
                    return False
            return True

        self.twin.wait_reported(done, timeout=timeout)


@contextmanager
def serving_task_pool(store: Path, contents: dict[str, dict[str, bytes]], workers: int = 2) -> Iterator[TaskPool]:
    """The service with every model of ``contents`` (name -> bundle files) at version 1,
    beside its bundled default model, rolled out to every worker."""
    with FileServer() as files, ServiceProcess.start(store, workers=workers, extra_env=dict(QUICK_REPORTS)) as service:
        bundles = {name: make_bundle(content) for name, content in contents.items()}
        for name, bundle in bundles.items():
            files.put(f"/{name}.zip", bundle.data)
        pool = TaskPool(service, LocalTwinFiles(store), files, bundles)
        pool.desire({name: "1" for name in bundles})
        pool.wait_serving()
        service.wait_until(lambda: all(requests.get(service.url + "/readyz", timeout=5).status_code == 200
                                       for _ in range(3 * workers)), "every worker ready with every model", 60)
        yield pool
