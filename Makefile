# uws: two commands for a fresh machine (see README):
#   make reproduce   install, build the laptop populations, execute every notebook into results/
#   make test        install, unit tests, then nbval on notebooks/
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Idle OpenMP threads that spin made LAPACK eigensolvers 10-50x slower on the shared 2-core machine
# (benchmarks/results.md); passive waiting costs nothing on an idle one.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup reproduce test unit nbval bench notebooks clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch==2.13.0 is pinned in pyproject.toml (CPU build); the rest follows from it.
	$(PY) -m pip install -e .
	touch $(STAMP)

reproduce: setup
	$(PY) -m uws_core.reproduce

test: setup unit nbval

unit: setup
	$(PY) -m pytest tests -q

nbval: setup
	$(PY) -m pytest --nbval-lax notebooks -q -p no:cacheprovider

bench: setup
	$(PY) benchmarks/bench_lora_subspace.py
	$(PY) benchmarks/bench_streaming.py

# Developers: re-execute the committed notebooks in place at laptop scale (what CI checks).
notebooks: setup
	$(PY) -m uws_core.reproduce --inplace

clean:
	rm -rf results .cache
