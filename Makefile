# Two commands for a new user (see README): `make demo` and `make test`.
# The virtual environment is built once and reused; delete .venv to start over.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# On a machine with an NVIDIA driver take the default (CUDA) torch build;
# elsewhere pin the CPU release that this workplace ships as a local wheel.
TORCH  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 'torch>=2.3' || echo 'torch==2.13.0')

.PHONY: setup demo test lint bench clean clean-cache

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/innet run scenarios/default.toml --out runs/default --force

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: setup  # ByzFL for the comparison; --no-deps: its torchvision would replace torch
	$(PY) -m pip install -q --no-deps byzfl==0.0.11
	$(PY) benchmarks/aggregators.py

clean: clean-cache
	rm -rf $(VENV) runs .pytest_cache .hypothesis

clean-cache:  # Numba does not notice edits to functions a cached kernel inlines
	find . -path ./$(VENV) -prune -o \( -name '*.nbi' -o -name '*.nbc' \) -print \
		| xargs rm -f
