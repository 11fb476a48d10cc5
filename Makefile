# make test: create/reuse .venv, install the pinned CPU stack, lint, run the tests.
# make run: the whole sft-to-rl flow on CONFIG (default: the embedded CPU default) with a local Prefect server.
# make test-fast: the quick subset while developing.   make setup: only the environment.   make bench: the RPSFT overhead benchmark (writes benchmarks/results/).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sft2rl-installed
# pytest-xdist workers for make test / test-fast: two share 2 cores, each test process with the cores divided among
# them (tests/conftest.py); TEST_WORKERS=0 runs the tests in one process.
TEST_WORKERS ?= 2
CONFIG ?= configs/smollm2-cpu.yaml
ARMS ?= sft,rpsft

.PHONY: setup test test-fast lint run claims bench clean

$(STAMP): requirements/cpu.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build (a plain 'torch' would pull a multi-GB CUDA build).
	$(PY) -m pip install -q torch==2.13.0
	# Everything else exactly as locked, without resolution (see docs/install.md for why --no-deps).
	$(PY) -m pip install -q --no-deps --ignore-requires-python -r requirements/cpu.lock
	# DeepSpeed for its RPSFT tests (ZeRO on CPU processes with gloo), in a folder of its own that only those tests put
	# on their path (TRL imports DeepSpeed wherever it is installed). An sdist: built without its CUDA ops, against the
	# torch installed above.
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-deps --no-build-isolation --target $(VENV)/deepspeed \
		deepspeed==0.19.8 hjson==3.1.0 msgpack==1.2.4
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	# The Compose Specification's JSON schema, which the tests validate docker/compose.yaml against without a Docker
	# binary: it ships inside this wheel, downloaded and read as a zip (never installed or imported).
	$(PY) -m pip download -q --no-deps -d $(VENV)/compose-spec docker-compose==1.29.2
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15

# unit and integration tests without the slow ones (real model, vLLM, DDP, resume kills) and the e2e server test
test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow" tests/unit tests/integration

run: $(STAMP)
	$(VENV)/bin/sft2rl run --config $(CONFIG) --arms $(ARMS) $(OVERRIDES)

# claims (a) and (b) at the method level: the default's recipe with five seeds, no RL (configs/smollm2-cpu-claims.yaml)
claims: $(STAMP)
	$(VENV)/bin/sft2rl run --config configs/smollm2-cpu-claims.yaml $(OVERRIDES)

bench: $(STAMP)
	$(PY) benchmarks/rpsft_overhead.py --out benchmarks/results/rpsft_overhead.json
	# what a user pays: the SFT stage's real training loop, rpsft beside sft, ratios added to the same file
	$(PY) benchmarks/arm_overhead.py --out benchmarks/results/arm_overhead.json \
		--into benchmarks/results/rpsft_overhead.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
