"""Runs the engine-test Godot project (tests/godot/project) under xvfb-run and reads its report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT = Path(__file__).resolve().parent / "project"
BRIDGE_LIBRARY = REPO_ROOT / "addons" / "lego_embed" / "native" / "build" / "liblego_bridge.so"
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"


@dataclass
class GodotRun:
    """One finished Godot process: its harness report (None if it wrote none), exit code,
    combined stdout+stderr, and wall time in seconds."""

    report: dict | None
    returncode: int
    output: str
    wall_s: float


def require_godot() -> None:
    """Skips with the set-up command when Godot, Xvfb or the built bridge are missing."""
    for tool in ("godot3", "xvfb-run"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed; `make setup` installs it (apt)")
    if not BRIDGE_LIBRARY.is_file():
        pytest.skip(f"{BRIDGE_LIBRARY} is not built; run `make godot-bridge`")


def run_scenario(
    scenario: str, out_dir: Path, env: dict[str, str] | None = None, timeout_s: float = 150.0
) -> GodotRun:
    """Starts the harness with $LEGO_TEST_SCENARIO=scenario; kills it after timeout_s."""
    require_godot()
    out = out_dir / f"{scenario}.json"
    full_env = {
        **os.environ,
        "LEGO_TEST_SCENARIO": scenario,
        "LEGO_TEST_OUT": str(out),
        "LEGO_TEST_TIMEOUT_S": str(timeout_s - 30.0),
        "LEGO_EMBED_PYTHON": str(VENV_PYTHON),
        **(env or {}),
    }
    command = ["xvfb-run", "-a", "godot3", "--path", str(PROJECT)]
    start = time.monotonic()
    process = subprocess.run(
        command, env=full_env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    wall_s = time.monotonic() - start
    report = json.loads(out.read_text()) if out.is_file() else None
    return GodotRun(report, process.returncode, process.stdout + process.stderr, wall_s)


def script_error_lines(output: str) -> list[str]:
    """Lines of a Godot log that report a problem of the game's scripts or of lego_embed: script
    and parse errors, and ERROR lines naming lego_embed or a res:// script (the engine's own
    complaints about the machine, such as no sound card or the C locale, are left out)."""
    lines = output.splitlines()
    return [
        line for k, line in enumerate(lines)
        if "SCRIPT ERROR" in line or "Parse Error" in line
        or ("ERROR" in line and ("lego" in line.lower() or (
            k + 1 < len(lines) and "res://" in lines[k + 1])))
    ]
