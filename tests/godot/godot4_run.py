"""Runs the Godot 4 engine-test project (tests/godot/project4) under xvfb-run inside the Debian sid
chroot that tools/godot4_chroot.sh builds, and reads its report."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from godot_run import GodotRun, run_scenario

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT = Path(__file__).resolve().parent / "project4"
CHROOT_TOOL = REPO_ROOT / "tools" / "godot4_chroot.sh"
BRIDGE_LIBRARY = (
    REPO_ROOT / "addons" / "lego_embed_godot4" / "native" / "build" / "liblego_bridge.so"
)
UNAVAILABLE_NOTE = REPO_ROOT / "build" / "godot4-unavailable.txt"
EXTENSION = "res://addons/lego_embed/native/lego_bridge.gdextension"
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
ENGINE_VERSIONS: set[str] = set()  # printed in the terminal summary (conftest.py)


def require_godot4() -> None:
    """Skips, with the reason, when the Godot 4 chroot or the GDExtension bridge is not there
    (the Makefile writes why the chroot could not be built to build/godot4-unavailable.txt)."""
    if UNAVAILABLE_NOTE.is_file():
        pytest.skip(f"Godot 4 is unavailable: {UNAVAILABLE_NOTE.read_text().strip()}")
    version = subprocess.run(
        [str(CHROOT_TOOL), "version"], capture_output=True, text=True, check=False
    )
    if version.returncode != 0:
        pytest.skip(f"the Godot 4 chroot is not built ({version.stderr.strip()}); "
                    "`make godot4-bridge` builds it")
    if not BRIDGE_LIBRARY.is_file():
        pytest.skip(f"{BRIDGE_LIBRARY} is not built; run `make godot4-bridge`")


def list_extension() -> None:
    """What the editor would write on its first scan: the runtime loads GDExtensions only from
    .godot/extension_list.cfg. (A headless `--import` would write it too, but Godot 4.6's editor
    crashes quitting right after an import with a GDExtension loaded, godotengine/godot#111645.)
    """
    listing = PROJECT / ".godot" / "extension_list.cfg"
    listing.parent.mkdir(exist_ok=True)
    listing.write_text(EXTENSION + "\n")


def run_scenario4(
    scenario: str,
    out_dir: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 150.0,
    godot_args: tuple[str, ...] = (),
) -> GodotRun:
    """Starts the harness with $LEGO_TEST_SCENARIO=scenario in the chroot (out_dir mounted at
    the same path); kills it after timeout_s."""
    require_godot4()
    list_extension()
    out = out_dir / f"{scenario}.json"
    full_env = {
        **os.environ,
        "LEGO_TEST_SCENARIO": scenario,
        "LEGO_TEST_OUT": str(out),
        "LEGO_TEST_TIMEOUT_S": str(timeout_s - 30.0),
        "LEGO_EMBED_PYTHON": str(VENV_PYTHON),
        **(env or {}),
    }
    command = [
        str(CHROOT_TOOL), "run", "--bind", str(out_dir), "--",
        "xvfb-run", "-a", "-s", "-screen 0 640x480x24", "godot", *godot_args,
        "--path", str(PROJECT),
    ]
    start = time.monotonic()
    process = subprocess.run(
        command, env=full_env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    wall_s = time.monotonic() - start
    report = json.loads(out.read_text()) if out.is_file() else None
    if report is not None:
        ENGINE_VERSIONS.add(f"{report['engine_version']} ({report['rendering_driver']})")
    return GodotRun(report, process.returncode, process.stdout + process.stderr, wall_s)


ENGINES = ("godot3", "godot4")  # what tests parametrised over both engines run on


def run_on_engine(
    engine: str,
    scenario: str,
    out_dir: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 150.0,
) -> GodotRun:
    """The scenario on Godot 3 (tests/godot/project) or Godot 4 (tests/godot/project4): both
    harnesses run the same scenarios and write the same report fields."""
    if engine == "godot4":
        return run_scenario4(scenario, out_dir, env, timeout_s)
    return run_scenario(scenario, out_dir, env, timeout_s)
