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
GEN := hanseq/v1/hanseq_pb2.py
GRPC_TOOLS := grpcio-tools==1.85.1

.PHONY: serve test lint system-deps test-system-deps install gen clean peer-venv gpu-kit

serve: $(STAMP)
	$(BIN)/hanseq serve

LINTED := hanseq tests bench clients/python

test: $(STAMP) test-system-deps
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

install: $(STAMP)

# Debian/Ubuntu packages the project needs: venv support for Python.
system-deps:
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3-venv; }

# What only the tests need: a real Redis server (the cache tests start their own), a font
# with Hangul (attention plots), openssl (throwaway TLS certificates) and kubectl (its
# kustomize renders the Kubernetes overlays; Debian's kubernetes-client where none is found),
# and promtool (checks and unit-tests the alert rules and dashboard queries; Debian ships it
# only in the prometheus package).
test-system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	[ -e /usr/share/fonts/truetype/nanum/NanumGothic.ttf ] || missing="$$missing fonts-nanum"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v kubectl >/dev/null || missing="$$missing kubernetes-client"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	[ -z "$$missing" ] || { $(SUDO) apt-get update -q && \
	  $(SUDO) apt-get install -y -q --no-install-recommends $$missing; }

$(STAMP): pyproject.toml clients/python/pyproject.toml clients/python/setup.py $(PROTO) | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '$(GRPC_TOOLS)'
	$(MAKE) gen
	$(BIN)/pip install -q $(FIND_LINKS) -e '.[dev]'
	$(BIN)/pip install -q -e './clients/python[plot]'
	touch $(STAMP)

# The peer toolkit of bench/peer.py (OpenNMT-py 3.5.1 needs torch < 2.3): its own venv, apart
# from the project's dependencies. Not part of `make test`; several GB from PyPI.
PEER_VENV := bench/peer/.venv
peer-venv: $(PEER_VENV)/.installed
$(PEER_VENV)/.installed: bench/peer/requirements.txt | system-deps
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q -r bench/peer/requirements.txt
	touch $@

# What one prepared training run on a lent GPU carries (bench/gpu_train.py): the device's
# missing wheels, KoNLPy and Mecab's dictionary, the corpora. Git-ignored; not part of `make test`.
gpu-kit: $(STAMP)
	$(BIN)/python bench/gpu_train.py kit

# Python stubs (+ .pyi types) from the .proto, into the package as hanseq.v1: built, never
# committed.
gen: $(GEN)
$(GEN): $(PROTO)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. \
	  --grpc_python_out=. $(PROTO)
	touch hanseq/v1/__init__.py

clean:
	rm -rf $(VENV) build hanseq/v1 *.egg-info clients/python/src/hanseq_client/_proto \
	  clients/python/build clients/python/src/*.egg-info
