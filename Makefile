# uws: two commands for a fresh machine (see README):
#   make reproduce   install, build the laptop populations, execute every notebook into results/,
#                    write the claims ledger results/CLAIMS.md
#   make test        install, unit tests, then nbval on notebooks/
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Idle OpenMP threads that spin made LAPACK eigensolvers 10-50x slower on the shared 2-core machine
# (benchmarks/results.md); passive waiting costs nothing on an idle one.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup populations fingerprints bases-check native-check reproduce test unit nbval bench notebooks lab site clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch==2.13.0 is pinned in pyproject.toml (CPU build); the rest follows from it.
	$(PY) -m pip install -e .
	touch $(STAMP)

# The LoRA, ViT and Llama populations for every seed, two at a time (cached; the notebooks then only read
# them), under the pinned CPU kernels of uws_core.linalg.numerics; each prints its fingerprint beside the committed one.
populations: setup
	$(PY) -m uws_core.zoo.populations --workers 2

# Developers: record the fingerprints of the populations and of the tiny test presets after a change that
# is meant to change the weights (data_manifests/population_fingerprints.json).
fingerprints: setup
	$(PY) -m uws_core.zoo.populations --workers 2 --record
	$(PY) -m uws_core.zoo.populations --tiny --record

# Developers: retrain the shipped pretrained bases (uws_core/zoo/pretrained/) and compare them file by file (sha256)
# with the shipped copies; `python -m uws_core.zoo.retrain_bases --write` replaces them after a meant change.
bases-check: setup
	$(PY) -m uws_core.zoo.retrain_bases --check

# Reviewers: another machine's bits, checked on this one. The populations are built again without the numerics pin
# (UWS_NATIVE_KERNELS=1: this CPU's own kernels, other weights; cached apart by profile), nbval runs the notebooks
# on them with their results in results/native/, and every claim's verdict is set beside make reproduce's
# (results/; run it first): exit status 1 if a checked output or a verdict moves. About 16 minutes on 2 cores.
native-check: setup
	UWS_NATIVE_KERNELS=1 $(PY) -m uws_core.zoo.populations --workers 2
	UWS_NATIVE_KERNELS=1 UWS_RESULTS=$(CURDIR)/results/native $(PY) -m pytest --nbval-lax notebooks -q -p no:cacheprovider -n 2 --dist loadfile
	$(PY) -m uws_core.report.ledger_diff results results/native --out results/native/verdicts.md

# Populations and notebooks in one schedule: each notebook starts once the populations it reads are built.
reproduce: setup
	$(PY) -m uws_core.report.reproduce --build-populations

test: setup unit nbval

unit: setup
	$(PY) -m pytest tests -q -n 2

# nbval under xdist only with --dist loadfile: each notebook's cells stay in order on one worker.
nbval: setup populations
	$(PY) -m pytest --nbval-lax notebooks -q -p no:cacheprovider -n 2 --dist loadfile

bench: setup
	$(PY) benchmarks/bench_lora_subspace.py
	$(PY) benchmarks/bench_streaming.py
	$(PY) benchmarks/bench_paper_shapes.py
	$(PY) -m benchmarks.bench_eigensolvers --out benchmarks/eigensolvers_results_2threads.json
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m benchmarks.bench_eigensolvers --out benchmarks/eigensolvers_results_1thread.json
	$(PY) -m benchmarks.bench_nb01_key --out benchmarks/nb01_key_results.json

# Developers: re-execute the committed notebooks in place at laptop scale (what CI checks).
notebooks: setup
	$(PY) -m uws_core.report.reproduce --inplace

# JupyterLab on notebooks/ with the project's kernel "uws (.venv)", installed into the venv (not ~/.local).
lab: setup
	$(PY) -m ipykernel install --sys-prefix --name uws --display-name "uws (.venv)"
	cd notebooks && ../$(VENV)/bin/jupyter lab

# A static site from what make reproduce wrote: results/site/index.html (claims ledger, notebook pages, figures).
site: setup
	$(PY) -m uws_core.report.site

clean:
	rm -rf results .cache
