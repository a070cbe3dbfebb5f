# The two quickstart commands: `make demo` (train gpt2-tiny, print a sample) and `make test`.
# Each creates .venv and installs what it needs, pinned by constraints.txt.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q -c constraints.txt
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-core: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e ".[torch,dev]"
	touch $@ $(VENV)/.installed-core

.PHONY: demo test test-fast bench
demo: $(VENV)/.installed-core
	$(VENV)/bin/jaxlm train configs/gpt2-tiny.yaml $(ARGS)
	$(VENV)/bin/jaxlm generate --run runs/gpt2-tiny --prompt "The import statement" --max-new-tokens 64 --repetition-penalty 1.3

# Tests run in $(JOBS) worker processes (pytest-xdist), one test file per worker at a time so
# module-scoped fixtures are built once; JOBS=0 runs them in this process.
JOBS ?= 2
PYTEST := $(PY) -m pytest -n $(JOBS) --dist loadfile

test: $(VENV)/.installed-dev
	$(PYTEST) $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-dev
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/train_throughput.py
