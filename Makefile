# Every target sets up what it needs on a fresh machine: system packages
# (as root, through apt-get) and a virtualenv in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all setup sysdeps test test-fast lint demo bench clean

all: test

sysdeps:
	@bash .ci/sysdeps

$(STAMP): pyproject.toml setup.py converter/chunked/_rollsum.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: sysdeps $(STAMP)

test: setup
	$(BIN)/pytest -q -rs tests

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not interop and not slow" tests

# ruff (lint and format check) and mypy, as configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check converter tests bench testdata
	$(BIN)/ruff format --check converter tests bench testdata
	$(BIN)/mypy converter

demo: setup
	bash testdata/demo.sh

bench: setup
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/bench_sync.py

clean:
	rm -rf $(VENV) .pytest_cache
