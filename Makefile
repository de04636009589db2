# `make demo` and `make test` each set up their own virtual environment on a fresh machine.
# torch is pinned to the CPU build on this machine kind; install it first so nothing pulls CUDA.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: venv demo test train bench clean

# The last install is of the upstream reward packages that tests/test_reward_conformance.py scores against:
# without their dependencies (CPU torch stays), in $(VENV)/upstream, off the venv's path (tests/upstream_rewards.py
# says why).
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps --upgrade --target $(VENV)/upstream torchvision==0.28.0 open_clip_torch==3.3.0 \
		image-reward==1.5 timm==0.6.13 fairscale==0.4.13 ftfy==6.3.1 wcwidth==0.2.13 \
		transformers==4.55.4 tokenizers==0.21.4 huggingface_hub==0.36.0
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
