# The two quickstart commands: `make demo` (train gpt2-tiny, print a sample) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q -c constraints.txt
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1

$(VENV)/.installed-%: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[$*]"
	touch $@

.PHONY: demo test test-fast bench
demo: $(VENV)/.installed-torch
	$(VENV)/bin/jaxlm train configs/gpt2-tiny.yaml
	$(VENV)/bin/jaxlm generate --run runs/gpt2-tiny --prompt "The import statement" --max-new-tokens 64

test: $(VENV)/.installed-torch,dev
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-torch,dev
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(VENV)/.installed-torch,dev
	$(PY) benchmarks/train_throughput.py
