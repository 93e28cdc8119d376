# Two commands for a fresh machine: `make demo` and `make test` (both include set-up).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint train-model eval

# torch==2.13.0 first: pip takes the CPU wheel on disk instead of pulling CUDA wheels.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(STAMP)

demo: setup
	$(VENV)/bin/lego-embed decide --model bundled --samples

test: setup
	$(PY) -m ruff check lego_embed tests tools
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check lego_embed tests tools

train-model: setup
	$(PY) tools/train_npc_model.py

eval: setup
	$(VENV)/bin/lego-embed eval --model bundled
