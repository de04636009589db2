# `make demo` and `make test` each set up their own virtual environment on a fresh machine.
# torch is pinned to the CPU build on this machine kind; install it first so nothing pulls CUDA.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: venv demo test train bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python scripts/demo.py

test: venv
	$(BIN)/python -m pytest

# Retrain the bundled digits diffusion model and digit classifier (a few minutes on 2 cores).
train: venv
	$(BIN)/python scripts/train_digits.py

clean:
	rm -rf $(VENV) runs
