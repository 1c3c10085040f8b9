# Two set-up commands: `make serve` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# These machines keep the CPU build of torch here; elsewhere pip takes it from PyPI.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

PROTO := proto/hanseq/v1/hanseq.proto
GEN := gen/hanseq/v1/hanseq_pb2.py
GRPC_TOOLS := grpcio-tools==1.85.1

.PHONY: serve test lint system-deps test-system-deps install gen clean

serve: $(STAMP)
	$(BIN)/hanseq serve

test: $(STAMP) test-system-deps
	$(BIN)/ruff check engine service tests bench
	$(BIN)/ruff format --check engine service tests bench
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check engine service tests bench
	$(BIN)/ruff format --check engine service tests bench
	$(BIN)/mypy

install: $(STAMP)

# Debian/Ubuntu packages the project needs: venv support for Python.
system-deps:
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3-venv; }

# What only the tests need: a real Redis server (the cache tests start their own).
test-system-deps:
	@command -v redis-server >/dev/null || { \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q redis-server; }

$(STAMP): pyproject.toml $(PROTO) | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '$(GRPC_TOOLS)'
	$(MAKE) gen
	$(BIN)/pip install -q $(FIND_LINKS) -e '.[dev]'
	touch $(STAMP)

# Python stubs (+ .pyi types) from the .proto: built, never committed.
gen: $(GEN)
$(GEN): $(PROTO)
	mkdir -p gen/hanseq/v1
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=gen --pyi_out=gen \
	  --grpc_python_out=gen $(PROTO)
	touch gen/hanseq/__init__.py gen/hanseq/v1/__init__.py

clean:
	rm -rf $(VENV) build gen *.egg-info
