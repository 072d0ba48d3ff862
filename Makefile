# `make train` and `make test` create .venv on first use: torch from the pinned wheel first, then the package.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: train test lint

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

train: $(VENV)/.installed
	$(PY) train.py +experiment=quickstart $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
