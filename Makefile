# Set-up and everyday commands. Each target creates .venv when missing and installs the project into it;
# a second run is fast because the install is stamped against pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on the project machines' disk; on a CUDA machine set TORCH_SPEC= (empty)
# to let pip take the default (CUDA) build within the pyproject pin.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 || echo "torch==2.13.0")

.PHONY: demo test lint install dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(if $(TORCH_SPEC),$(BIN)/pip install --quiet "$(TORCH_SPEC)")
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/dcs demo

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check dcs_cli tests

clean:
	rm -rf $(VENV) build *.egg-info
