# make test: create/reuse .venv, install the pinned CPU stack, lint, run the tests.
# make setup: only the environment.   make bench: the RPSFT overhead benchmark (writes benchmarks/results/).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sft2rl-installed

.PHONY: setup test lint bench clean

$(STAMP): requirements/cpu.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build (a plain 'torch' would pull a multi-GB CUDA build).
	$(PY) -m pip install -q torch==2.13.0
	# Everything else exactly as locked, without resolution (see README "Installing" for why --no-deps).
	$(PY) -m pip install -q --no-deps --ignore-requires-python -r requirements/cpu.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/rpsft_overhead.py --out benchmarks/results/rpsft_overhead.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
