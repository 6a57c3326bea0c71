"""The folders show the architecture: dependencies point one way (service -> twinfer <-
workers), and no module grows past the size a newcomer can read in one go."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import PACKAGES, PROJECT_ROOT

# What service may take from the HTTP worker: the check of its settings before gunicorn starts.
SERVICE_USES_OF_WORKERS = {"workers.settings"}
MAX_LINES = 400  # more needs a reason in the module's docstring ("... lines: ...")


def _modules(package: str) -> list[Path]:
    return sorted((PROJECT_ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_core_imports_neither_process():
    offenders = {str(p.relative_to(PROJECT_ROOT)): sorted(n for n in _imports(p) if _top(n) in ("service", "workers"))
                 for p in _modules("twinfer")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_http_worker_never_imports_the_supervisor():
    offenders = {str(p.relative_to(PROJECT_ROOT)): sorted(n for n in _imports(p) if _top(n) == "service")
                 for p in _modules("workers")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_supervisor_uses_only_the_workers_settings_check():
    used = {n for p in _modules("service") for n in _imports(p) if _top(n) == "workers"}
    assert used <= SERVICE_USES_OF_WORKERS, used


def test_no_module_is_long_without_saying_why():
    long = []
    for package in PACKAGES:
        for path in _modules(package):
            lines = len(path.read_text().splitlines())
            docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
            if lines > MAX_LINES and " lines: " not in docstring:
                long.append(f"{path.relative_to(PROJECT_ROOT)} ({lines} lines)")
    assert long == []
