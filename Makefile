# Set-up is part of every target: a fresh machine needs only Python 3.11 and make.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
PYTEST_ARGS ?=

.PHONY: all uv sync test lint demo demo-library bench clean

all: test

uv:
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
	@command -v $(UV) >/dev/null 2>&1 || (echo "uv could not be installed" >&2; exit 1)

.venv/.synced: uv.lock pyproject.toml | uv
	$(UV) sync --frozen
	@touch $@

sync: .venv/.synced

test: sync
	$(UV) run --frozen pytest $(PYTEST_ARGS)

lint: sync
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy

demo: sync
	$(UV) run --frozen python -m api.demo demo-out

demo-library: sync
	$(UV) run --frozen python -m grft_core.demo demo-out/library

bench: sync
	$(UV) run --frozen python -m bench.step_time

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache demo-out
