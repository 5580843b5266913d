# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The tests also run on a real MNIST IDX folder when one is found here.
WSJAX_MNIST_DIR ?= $(wildcard ../shared/data/mnist)
export WSJAX_MNIST_DIR

.PHONY: demo test test-online bench bench-smoke bench-table lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m experiments.demo

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q --durations=10

# MNIST through TensorFlow Datasets, downloaded from a local server and prepared end to end.
# It needs the tfds extra (TensorFlow, a large install), so `make test` skips it.
$(VENV)/.tfds: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[tfds]"
	touch $@

test-online: $(VENV)/.tfds
	$(PY) -m pytest -q tests/test_tfds.py

# PyTorch is needed by the benchmarks only, never by `make test`.
$(VENV)/.peers: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[peers]"
	touch $@

bench: $(VENV)/.peers
	$(PY) -m pytest benchmarks -q -o python_files="bench_*.py" \
		--benchmark-columns=median,iqr,rounds

# Every benchmark once at a tiny size, untimed: that they run (CI; without PyTorch its cases
# skip).
bench-smoke: $(VENV)/.installed
	$(PY) -m pytest benchmarks -q -o python_files="bench_*.py" --smoke --benchmark-disable

# One table: wsjax against the PyTorch peers, 250 seeds (minutes).
bench-table: $(VENV)/.peers
	$(PY) benchmarks/train_table.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
