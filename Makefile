# Two commands set up everything on a fresh Debian/Ubuntu machine with Python 3.11+:
#   make run   - serve the bundled model on the embedded default (local store, no Azure)
#   make test  - install what the tests need (Python packages, mosquitto, promtool, hey, wrk) and run them all
#   make test-fast - only the tests that start no process (pytest -m "not processes")
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test test-fast bench tools clean

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt requirements-operator.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.runtime
	$(PY) -m service

tools:
	ops/install-tools.sh

test: $(VENV)/.dev tools
	$(PY) -m pytest

test-fast: $(VENV)/.dev
	$(PY) -m pytest -q -m "not processes"

bench: $(VENV)/.dev tools
	$(PY) ops/bench/serving.py

clean:
	rm -rf $(VENV) var
