# Two entry points that work on a fresh machine with Python >= 3.10:
#   make demo   set up .venv, generate the demo JPEGs, train a ResNet with PGT on the CPU
#   make test   set up .venv (with the DALI extra and pytest), run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/pgt-train: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dali,dev]"
	touch $@

.PHONY: setup demo test
setup: $(BIN)/pgt-train

demo: setup
	$(BIN)/pgt-train --config configs/demo.yaml

test: setup
	$(BIN)/python -m pytest -q
