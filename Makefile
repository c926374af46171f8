# cxl-testbed. `make demo` sets up a fresh bookworm machine and runs the 2-node demo;
# `make test` runs the whole suite (lint, types, unit, VM integration tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$(PATH)

.PHONY: host-deps deps setup venv image qemu kernel kernel-debug demo lint test test-unit test-vm bench clean-testbeds

# Host packages come first: the venv builds libvirt-python against libvirt-dev. The script is
# idempotent and quick when everything is there, so it runs every time.
host-deps:
	./scripts/install-host-deps

deps: host-deps venv

venv: host-deps $(VENV)/.installed
$(VENV)/.installed: pyproject.toml | host-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The one explicit change to the host (testbed setup prints each change it makes).
setup: deps
	$(PY) -m testbed setup

image: deps
	$(PY) -m testbed image bookworm

# QEMU 10.0.2 with qemu-patches/ (direct-mapped CXL memory): what topologies use by default.
qemu: deps
	$(PY) -m testbed qemu build

kernel: deps
	$(PY) -m testbed kernel build

kernel-debug: deps
	$(PY) -m testbed kernel build --variant debug

demo: deps setup image qemu
	$(PY) -m testbed demo -f testbeds/two-node.yaml

lint: venv
	$(VENV)/bin/ruff check testbed tests guest-agent bench protocol scripts/import-graph setup.py
	scripts/import-graph >/dev/null
	$(VENV)/bin/mypy

test-unit: venv
	$(VENV)/bin/pytest -q tests/unit

test-vm: deps setup image qemu
	$(VENV)/bin/pytest -q tests/vm

test: deps setup lint image qemu kernel kernel-debug
	$(VENV)/bin/pytest tests

bench: deps setup image qemu
	$(PY) bench/bringup.py --runs 3

clean-testbeds: venv
	for t in $$(ls /var/lib/cxl-testbed/testbeds 2>/dev/null); do $(PY) -m testbed down $$t; done
