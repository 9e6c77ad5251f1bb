# Two entry points that work on a fresh machine with Python >= 3.10:
#   make demo   set up .venv with what the demo uses, generate the demo JPEGs, train a ResNet with PGT on the CPU
#   make test   set up .venv with everything (DALI, report and test extras), run the test suite
# The first install downloads PyTorch with its CUDA libraries (about 5.3 GB installed; the DALI extra
# that only `make test` adds is about another 1 GB). pip prints each package as it goes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check --progress-bar on

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamp files: an install reruns when pyproject.toml changes.
$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	@echo "Installing pgt-train and PyTorch into $(VENV) (a few GB the first time) ..."
	$(PIP) -e .
	touch $@

$(VENV)/.installed-all: pyproject.toml | $(BIN)/python
	@echo "Installing pgt-train with the dali, report, dev and torchcodec extras into $(VENV) (a few GB the first time) ..."
	$(PIP) -e ".[dali,report,dev,torchcodec]"
	touch $@ $(VENV)/.installed-demo

.PHONY: setup setup-demo demo test
setup-demo: $(VENV)/.installed-demo
setup: $(VENV)/.installed-all

demo: setup-demo
	$(BIN)/pgt-train --config configs/demo.yaml

# The Docker test (tests/test_docker.py: a first run builds its base images, ~10 min, mostly waiting on disk and
# network) runs in a second pytest beside the rest of the suite, whose SLURM and torchrun tests mostly wait on
# timers: on 2 cores the two overlap. Its output follows the suite's; either failing fails `make test`.
DOCKER_LOG ?= $(or $(TMPDIR),/tmp)/pgt-train-docker-test.log
test: setup
	@$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_docker.py > $(DOCKER_LOG) 2>&1 & docker_pid=$$!; \
	$(BIN)/python -m pytest -q --durations=15 --ignore=tests/test_docker.py; suite=$$?; \
	wait $$docker_pid; docker=$$?; \
	echo "--- tests/test_docker.py (run beside the suite; log $(DOCKER_LOG)) ---"; cat $(DOCKER_LOG); \
	echo "make test: suite exit $$suite, docker test exit $$docker"; \
	[ $$suite -eq 0 ] && [ $$docker -eq 0 ]

# The Docker image for real (root; installs docker.io, starts its own dockerd; also part of `make test`).
.PHONY: docker-test
docker-test: setup
	$(BIN)/python -m pytest -q tests/test_docker.py

# The inner loop: the tests that spawn no process and train for no more than a couple of seconds (`-m "not slow"`).
.PHONY: test-fast
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"
