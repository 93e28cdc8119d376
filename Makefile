# Two commands for a fresh machine: `make demo` and `make test` (both include set-up).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint train-model eval godot-bridge godot-compare

# torch==2.13.0 first: pip takes the CPU wheel on disk instead of pulling CUDA wheels.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Godot 3, Xvfb, Mesa and a C toolchain (apt, only when missing), GDNative headers from
# Debian's godot source package, and the bridge compiled against the venv's Python.
godot-bridge: $(STAMP)
	addons/lego_embed/native/build.sh $(PY)

setup: $(STAMP) godot-bridge

# Sample decisions in the terminal, then the Godot combat demo: in a window when there is a
# display, else under Xvfb for 60 s (writes docs/demo/report.json and docs/demo/screenshot.png).
demo: setup
	$(VENV)/bin/lego-embed decide --model bundled --samples
	demo_game/run_demo.sh

test: setup
	$(PY) -m ruff check lego_embed tests tools addons
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check lego_embed tests tools addons

# The Godot demo with the LLM off, then on (60 s each, headless): the FPS cost a player feels.
godot-compare: setup
	demo_game/run_demo.sh --compare

train-model: setup
	$(PY) tools/train_npc_model.py

eval: setup
	$(VENV)/bin/lego-embed eval --model bundled
