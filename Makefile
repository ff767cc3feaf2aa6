# Every target sets up what it needs on a fresh machine: system packages
# (as root, through apt-get) and a virtualenv in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all setup sysdeps test test-fast lint demo bench fuzz clean image image-wheels

all: test

sysdeps:
	@bash .ci/sysdeps

$(STAMP): pyproject.toml setup.py converter/chunked/_rollsum.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: sysdeps $(STAMP)

# Lint first: a tree that does not pass make lint does not pass make test (what .ci/run calls).
test: setup lint
	$(BIN)/pytest -q -rs tests

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not interop and not slow" tests

# ruff (lint and format check) and mypy, as configured in pyproject.toml.
# LINT_FLAGS passes extra ruff options, e.g. LINT_FLAGS="--exclude converter/sync.py"
# while a branch that owns a file is still open; empty (the whole tree) by default.
LINT_FLAGS ?=
lint: $(STAMP)
	$(BIN)/ruff check $(LINT_FLAGS) converter tests bench testdata
	$(BIN)/ruff format --check $(LINT_FLAGS) converter tests bench testdata
	$(BIN)/mypy converter

demo: setup
	bash testdata/demo.sh

# Hypothesis fuzzers (tests marked fuzz) with fresh random inputs until FUZZ_SECONDS
# are spent in all; prints the number of inputs tried (FUZZ_REPORT=file.json keeps it).
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/pytest -q -rs -m fuzz --timeout=$$(( $(FUZZ_SECONDS) + 600 )) tests

bench: setup
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/bench_memory.py
	$(BIN)/python bench/bench_sync.py
	$(BIN)/python bench/bench_cache.py --rounds 3

# zconv as a container image (Containerfile). Wheels are built here on the host,
# so the image builds with no package index; IMAGE_BASE needs Python 3.11 (the
# wheels' ABI is the host's). IMAGE_BASE=localhost/... for a local base.
IMAGE ?= localhost/zconv:latest
IMAGE_BASE ?= docker.io/library/python:3.11-slim-bookworm
PODMAN ?= podman

image-wheels: $(STAMP)
	rm -rf build/image-wheels && mkdir -p build/image-wheels
	$(BIN)/pip wheel -q --wheel-dir build/image-wheels . pip

image: image-wheels
	$(PODMAN) build --network=none --build-arg BASE=$(IMAGE_BASE) -t $(IMAGE) -f Containerfile .
	@$(PODMAN) image inspect --format 'built $(IMAGE): {{.Size}} bytes' $(IMAGE)

clean:
	rm -rf $(VENV) .pytest_cache
