# Two commands do all setup on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench venv clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Exact torch pins first, so nothing later can pull another torch.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	# facenet-pytorch 2.6.0 pins torch<2.3 / Pillow<10.3; its MTCNN works with torch 2.14, so no deps.
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/simpsonize serve

test: $(STAMP)
	# Lint and format first: seconds, and a red line names the file (rules: pyproject.toml's [tool.ruff]).
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/simpsonize bench

clean-venv:
	rm -rf $(VENV)
