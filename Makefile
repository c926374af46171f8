# cxl-testbed. `make demo` sets up a fresh bookworm machine and runs the 2-node demo;
# `make test` runs the whole suite (lint, types, unit, VM integration tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$(PATH)

.PHONY: deps venv image kernel kernel-debug demo lint test test-unit test-vm bench clean-testbeds

deps: venv
	./scripts/install-host-deps

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@[ -x /usr/bin/pkg-config ] || ./scripts/install-host-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

image: deps
	$(PY) -m testbed image bookworm

kernel: deps
	$(PY) -m testbed kernel build

kernel-debug: deps
	$(PY) -m testbed kernel build --debug

demo: deps image
	$(PY) -m testbed demo -f testbeds/two-node.yaml

lint: venv
	$(VENV)/bin/ruff check testbed tests guest-agent bench
	$(VENV)/bin/mypy

test-unit: venv
	$(VENV)/bin/pytest -q tests/unit

test-vm: deps image
	$(VENV)/bin/pytest -q tests/vm

test: deps lint image kernel kernel-debug
	$(VENV)/bin/pytest tests

bench: deps image
	$(PY) bench/bringup.py --runs 3

clean-testbeds: venv
	for t in $$(ls /var/lib/cxl-testbed/testbeds 2>/dev/null); do $(PY) -m testbed down $$t; done
