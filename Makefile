# Everything runs from the virtual environment at .venv/, created on first use.
# `make demo` and `make test` install what they need (venv, apt packages, Kafka jars) idempotently.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv system-deps demo test unit lint schemas infra-up infra-down clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "recwatch needs Python >= 3.11; set PYTHON=python3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	bash infra/install-system-deps.sh

demo: venv system-deps
	$(BIN)/recwatch demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: venv system-deps lint
	$(BIN)/pytest

unit: venv
	$(BIN)/pytest -m 'not integration'

schemas: venv
	$(BIN)/python -m schemas.generate

infra-up: venv system-deps
	$(BIN)/recwatch infra up

infra-down: venv
	$(BIN)/recwatch infra down

clean:
	rm -rf $(VENV) .recwatch .mypy_cache .ruff_cache .pytest_cache
