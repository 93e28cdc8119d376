# Two commands for a fresh machine: `make demo` and `make test` (both include set-up).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LATEST_VENV ?= .venv-latest
PARITY_OUT ?= build/test-latest

.PHONY: setup demo test test-latest lint train-model eval godot-bridge godot-compare lock \
	godot4-bridge godot4-compare

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
# with the newest releases pyproject.toml's ranges allow, torch excepted (it stays the CPU wheel
# on disk: its newest release is a CUDA build of several GB, and it is not what moves under us).
# Versions and the pytest summary go to $(PARITY_OUT); record them in docs/COMPATIBILITY.md.
# PARITY_PINS holds a version to test instead of the newest, e.g. PARITY_PINS=transformers==5.23.0
test-latest:
	rm -rf $(LATEST_VENV) && python3 -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install -q --upgrade pip
	$(LATEST_VENV)/bin/pip install -q torch==2.13.0
	$(LATEST_VENV)/bin/pip install -q --upgrade --upgrade-strategy eager -e '.[test]' \
		torch==2.13.0 $(PARITY_PINS)
	mkdir -p $(PARITY_OUT)
	$(LATEST_VENV)/bin/pip freeze --all --exclude-editable > $(PARITY_OUT)/versions.txt
	$(LATEST_VENV)/bin/python -m pytest -q -m parity 2>&1 | tee $(PARITY_OUT)/pytest.txt

# Godot 3, Xvfb, Mesa and a C toolchain (apt, only when missing), GDNative headers from
# Debian's godot source package, and the bridge compiled against the venv's Python.
godot-bridge: $(STAMP)
	addons/lego_embed/native/build.sh $(PY)

# Godot 4 (Debian sid's, in a chroot under build/: tools/godot4_chroot.sh) and the GDExtension
# bridge built against it. When the chroot cannot be built (no root, mirror unreachable), the
# reason goes to build/godot4-unavailable.txt, the Godot 4 tests skip with it, Godot 3 is unaffected.
godot4-bridge: $(STAMP)
	@mkdir -p build && rm -f build/godot4-unavailable.txt
	@if tools/godot4_chroot.sh ensure 2>build/godot4-ensure.log; then \
		addons/lego_embed_godot4/native/build.sh $(PY) $(CURDIR)/tools/godot4_chroot.sh run godot; \
	else tail -1 build/godot4-ensure.log | tee build/godot4-unavailable.txt; \
		echo "Godot 4 is unavailable (above); its tests will skip, the Godot 3 ones still run"; fi

setup: $(STAMP) godot-bridge godot4-bridge

# Sample decisions and barks in the terminal, then the Godot combat demo: in a window when there
# is a display, else under Xvfb. Godot 4 by default (demo_game_godot4/, 60 s, writes
# docs/demo/godot4/report.json and screenshot.png); `make demo GODOT=3` runs the Godot 3 demo
# (demo_game/, the same game: enemies that act and speak; 60 s with the LLM off and 60 s on: writes
# docs/demo/report.json with both runs' FPS, and docs/demo/screenshot.png), as does a machine
# where the Godot 4 chroot could not be built.
GODOT ?= 4
demo: setup
	$(VENV)/bin/lego-embed decide --model bundled --samples
	@if [ "$(GODOT)" = 3 ]; then demo_game/run_demo.sh; \
	elif [ -f build/godot4-unavailable.txt ]; then \
		echo "Godot 4 is unavailable ($$(cat build/godot4-unavailable.txt)): running the Godot 3 demo"; \
		demo_game/run_demo.sh; \
	else demo_game_godot4/run_demo.sh; fi

test: setup
	$(PY) -m ruff check lego_embed tests tools addons
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check lego_embed tests tools addons

# The Godot demo with the LLM off, then on (60 s each, headless): the FPS cost a player feels.
godot-compare: setup
	demo_game/run_demo.sh --compare

# The same on Godot 4 (Vulkan, Mobile renderer, lavapipe here).
godot4-compare: setup
	demo_game_godot4/run_demo.sh --compare

train-model: setup
	$(PY) tools/train_npc_model.py

eval: setup
	$(VENV)/bin/lego-embed eval --model bundled
