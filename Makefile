# vitforge: `make demo` compresses the embedded model; `make test` runs the test suite.
# Both set themselves up first (virtualenv in .venv, pinned packages, Debian test packages).
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 1
export NNCF_EXTENSION_LOAD_TIMEOUT ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test bench clean
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m compress --recipe recipes/int4-vit.yaml --out runs/demo --set evaluation.probe_train=500 --set evaluation.test=300

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf runs build *.egg-info
