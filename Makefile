# Two commands do everything (see README): `make demo` and `make test`.
# TORCH_SPEC pins the CPU build that this machine kind keeps on local disk (seconds to install).
# On a GPU machine: `make demo TORCH_SPEC=torch` (PyPI's CUDA build) or just `pip install -e .`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
CONFIG ?= configs/01_deep_sigmoid.yaml

.PHONY: install install-test install-peers install-browser demo test test-fast lint bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Every later pip call is constrained to the torch installed first: an extra that asks for another
# torch (lightning, transformers) makes pip fail instead of swapping in a multi-GB CUDA build.
PIN := $(VENV)/torch-constraint.txt

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(PIN)
	$(BIN)/pip install -q -c $(PIN) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -c $(PIN) -e ".[test,ray,lightning,huggingface,tensorboard,wandb,mlflow,notebook]"
	touch $@

# The peers of benchmarks/monitor.py (not part of `make test`). BackPACK and Cockpit without their
# dependencies: BackPACK's torchvision would replace torch. Fails if torch changed anyway.
$(VENV)/.installed-peers: $(VENV)/.installed pyproject.toml
	before=$$($(BIN)/python -c 'import torch; print(torch.__version__)'); \
	$(BIN)/pip install -q -e ".[peers]" && \
	$(BIN)/pip install -q --no-deps backpack-for-pytorch==1.7.1 cockpit-for-pytorch==1.0.2 && \
	after=$$($(BIN)/python -c 'import torch; print(torch.__version__)') && \
	if [ "$$before" != "$$after" ]; then echo "installing the peers changed torch $$before -> $$after" >&2; exit 1; fi
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test install-browser
install-peers: $(VENV)/.installed-peers

# tests/test_report.py renders `vgrad report` in Debian's headless Chromium (as root, as CI runs).
install-browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| { echo "the report tests need chromium: apt-get install chromium (as root)" >&2; exit 1; }

demo: install
	$(BIN)/vgrad run $(CONFIG)

test: install-test lint
	$(BIN)/python -m pytest

# The inner loop: everything but the tests marked slow (about a minute on 2 cores).
test-fast: install-test lint
	$(BIN)/python -m pytest -m "not slow" -q

lint: install-test
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info

# Every benchmark (docs/benchmarks.md): minutes; run it on an otherwise idle machine.
bench: install
	$(BIN)/python benchmarks/run_all.py

# The same in seconds with tiny sizes: proves the command works, the figures mean nothing.
bench-quick: install
	$(BIN)/python benchmarks/run_all.py --quick
