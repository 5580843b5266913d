# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The tests also run on a real MNIST IDX folder when one is found here.
WSJAX_MNIST_DIR ?= $(wildcard ../shared/data/mnist)
export WSJAX_MNIST_DIR

.PHONY: demo test bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m experiments.demo

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) -m pytest benchmarks -q --benchmark-columns=median,iqr,rounds

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
