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

test: $(VENV)/.installed-dev
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/train_throughput.py
