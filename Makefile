# Two commands for a fresh machine: `make demo` and `make test` (both include set-up).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LATEST_VENV ?= .venv-latest
PARITY_OUT ?= build/test-latest

.PHONY: setup demo test test-latest lint train-model eval godot-bridge godot-compare lock

# Exact versions of every package from requirements.lock (made by `make lock`; torch is the CPU
# wheel on disk), then the package itself without touching them.
$(STAMP): pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Re-resolve requirements.lock from pyproject.toml's ranges (newest releases they allow).
lock:
	tools/lock_dependencies.sh

# The parity tests (our decoder against the transformers oracle) in a separate environment
# with the newest releases pyproject.toml's ranges allow (torch stays the CPU wheel on disk).
# Versions and the pytest summary go to $(PARITY_OUT); record them in docs/COMPATIBILITY.md.
# PARITY_PINS holds a version to test instead of the newest, e.g. PARITY_PINS=transformers==5.23.0
test-latest:
	rm -rf $(LATEST_VENV) && python3 -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install -q --upgrade pip
	$(LATEST_VENV)/bin/pip install -q torch==2.13.0
	$(LATEST_VENV)/bin/pip install -q --upgrade --upgrade-strategy eager -e '.[test]' $(PARITY_PINS)
	mkdir -p $(PARITY_OUT)
	$(LATEST_VENV)/bin/pip freeze --all --exclude-editable > $(PARITY_OUT)/versions.txt
	$(LATEST_VENV)/bin/python -m pytest -q -m parity 2>&1 | tee $(PARITY_OUT)/pytest.txt

# Godot 3, Xvfb, Mesa and a C toolchain (apt, only when missing), GDNative headers from
# Debian's godot source package, and the bridge compiled against the venv's Python.
godot-bridge: $(STAMP)
	addons/lego_embed/native/build.sh $(PY)

setup: $(STAMP) godot-bridge

# Sample decisions and barks in the terminal, then the Godot combat demo: in a window when there
# is a display, else under Xvfb for 60 s with the LLM off and 60 s with it on (writes
# docs/demo/report.json with both runs' FPS, and docs/demo/screenshot.png).
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
