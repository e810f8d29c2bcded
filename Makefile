# Set-up is part of every target: a fresh machine needs only Python 3.11 and make.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
PYTEST_ARGS ?=

.PHONY: all uv sync test lint demo demo-chat demo-library bench bench-full clean

all: test

uv:
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
	@command -v $(UV) >/dev/null 2>&1 || (echo "uv could not be installed" >&2; exit 1)

.venv/.synced: uv.lock pyproject.toml | uv
	$(UV) sync --frozen
	@touch $@

sync: .venv/.synced

test: sync
	@bash tests/dashboard/ensure_chromium.sh
	$(UV) run --frozen pytest $(PYTEST_ARGS)

lint: sync
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy
	$(UV) run --frozen lint-imports

demo: sync
	$(UV) run --frozen python -m api.demo demo-out

demo-chat: sync
	$(UV) run --frozen python -m api.demo_chat demo-out/chat

demo-library: sync
	$(UV) run --frozen python -m grft_core.demo demo-out/library

# BENCH_THREADS: torch threads per benchmark process (the accuracy study runs two one-thread workers;
# use 1 on a machine shared with other heavy processes).
BENCH_THREADS ?= 1

# Quick mode: subsets and one seed; rewrites bench/results/*_quick.* (bench/RESULTS.md says how long).
bench: sync
	$(UV) run --frozen python -m bench.run --quick --threads $(BENCH_THREADS)

# The accuracy study: every method under the same learning-rate search, three seeds, the ablations and
# the language-model study; sized for about 2.5 hours on an idle 2-core CPU. It resumes where it stopped.
bench-full: sync
	$(UV) run --frozen python -m bench.run --threads $(BENCH_THREADS)

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache demo-out
