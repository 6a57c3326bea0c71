"""The settings table: every variable the code reads is declared once, and README's
configuration table is the one generated from it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.paths import PACKAGES, PROJECT_ROOT
from twinfer.settings_table import BY_NAME, README_BEGIN, README_END, SETTINGS, Setting, read, readme_table

SOURCES = [p for package in PACKAGES for p in (PROJECT_ROOT / package).rglob("*.py")]


def test_the_readme_table_is_the_generated_one():
    readme = (PROJECT_ROOT / "README.md").read_text()
    shown = readme[readme.index(README_BEGIN) + len(README_BEGIN):readme.index(README_END)].strip()
    assert shown == readme_table(), "README's configuration table is stale: run python -m twinfer.settings_table --readme"


def test_every_variable_the_code_names_is_in_the_table():
    named = set()
    for path in SOURCES:
        named |= set(re.findall(r"\b(TWINFER_[A-Z_]+[A-Z])\b", path.read_text()))
    undeclared = sorted(n for n in named if n not in BY_NAME)
    assert undeclared == []


def test_no_module_reads_a_setting_around_the_table():
    raw_reads = re.compile(r"""environ(?:\.get)?[\[(]\s*["'](?:TWINFER|IOTHUB)_|env\.get\(\s*["'](?:TWINFER|IOTHUB)_""")
    offenders = [str(p.relative_to(PROJECT_ROOT)) for p in SOURCES if raw_reads.search(p.read_text())]
    assert offenders == []


def test_each_setting_is_declared_once_with_a_doc():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    assert all(s.doc and s.kind in ("int", "seconds", "bool", "text", "path", "choice", "secret") for s in SETTINGS)


@pytest.mark.parametrize(("name", "raw", "message"), [
    ("TWINFER_HTTP_PORT", "eighty", "TWINFER_HTTP_PORT must be an integer, got 'eighty'"),
    ("TWINFER_KEEP_VERSIONS", "1", "TWINFER_KEEP_VERSIONS must be >= 2, got 1"),
    ("TWINFER_BODY_TIMEOUT", "soon", "TWINFER_BODY_TIMEOUT must be a number of seconds, got 'soon'"),
    ("TWINFER_UPDATE_RETRY_SECONDS", "0", "TWINFER_UPDATE_RETRY_SECONDS must be >= 0.1, got 0"),
    ("TWINFER_SERVE", "maybe", "TWINFER_SERVE must be true or false, got 'maybe'"),
    ("TWINFER_WORKER_CLASS", "gevent", "TWINFER_WORKER_CLASS must be one of gthread, sync, got 'gevent'"),
])
def test_a_bad_value_is_an_error_naming_the_variable(name, raw, message):
    with pytest.raises(ValueError) as caught:
        read(name, {name: raw})
    assert str(caught.value) == message


def test_values_defaults_and_computed_defaults():
    assert read("TWINFER_HTTP_PORT", {}) == 8080 and read("TWINFER_HTTP_PORT", {"TWINFER_HTTP_PORT": " 9000 "}) == 9000
    assert read("TWINFER_SERVE", {"TWINFER_SERVE": "off"}) is False and read("TWINFER_SERVE", {}) is True
    assert read("TWINFER_ACCESS_LOG", {"TWINFER_ACCESS_LOG": "  "}) is None  # blank = unset
    assert read("TWINFER_INTRA_OP_THREADS", {"TWINFER_WORKERS": "64"}) == 1
    relative = read("TWINFER_TLS_CERT", {"TWINFER_TLS_CERT": "certs/server.pem"})
    assert relative == Path.cwd() / "certs" / "server.pem"


def test_the_worker_class_choices_are_the_classes_gunicorn_is_given():
    from workers.gunicorn_config import WORKER_CLASSES

    assert tuple(WORKER_CLASSES) == BY_NAME["TWINFER_WORKER_CLASS"].choices


def test_a_computed_default_is_shown_in_words():
    computed = [s for s in SETTINGS if callable(s.default)]
    assert computed and all(s.shown_default for s in computed)
    assert Setting("X", "int", None, "d").readme_default() == "unset"
