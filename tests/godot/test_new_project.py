"""A new Godot project set up from text exactly as docs/GODOT.md says (its `new-project` files
for Godot 3, its `new-project4` files for Godot 4, the engine's addon symlinked in), run under
Xvfb (Godot 4: in the chroot): the guard in the .tscn decides, the merchant made from script
speaks, and the log has no problem lines."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from godot4_run import CHROOT_TOOL, ENGINES, require_godot4
from godot_run import (
    BRIDGE_LIBRARY,
    REPO_ROOT,
    VENV_PYTHON,
    require_godot,
    script_error_lines,
)

pytestmark = [pytest.mark.godot, pytest.mark.slow]

DOCS = REPO_ROOT / "docs" / "GODOT.md"
FILE_BLOCK = re.compile(r"<!-- (new-project4?): (\S+) -->\s*```\w*\n(.*?)```", re.DOTALL)
BLOCK_KIND = {"godot3": "new-project", "godot4": "new-project4"}
ADDON = {"godot3": REPO_ROOT / "addons" / "lego_embed",
         "godot4": REPO_ROOT / "addons" / "lego_embed_godot4"}
DOCS_FILES = {"godot3": {"project.godot", "main.tscn", "main.gd"},
              "godot4": {"project.godot", ".godot/extension_list.cfg", "main.tscn", "main.gd"}}
GUARD_ACTIONS = ("open the gate", "ask for papers", "call the captain")
WANT_GUARD = 3
TIMEOUT_S = 240.0


def docs_files(engine: str) -> dict[str, str]:
    files = {name: text for kind, name, text in FILE_BLOCK.findall(DOCS.read_text())
             if kind == BLOCK_KIND[engine]}
    assert set(files) == DOCS_FILES[engine], sorted(files)
    return files


def godot_command(engine: str, project: Path) -> list[str]:
    """Godot 3 on this machine, or Godot 4 in the chroot (the project's folder bound in)."""
    if engine == "godot4":
        require_godot4()
        return [str(CHROOT_TOOL), "run", "--bind", str(project.parent), "--",
                "xvfb-run", "-a", "godot", "--path", str(project)]
    require_godot()
    assert BRIDGE_LIBRARY.is_file()
    return ["xvfb-run", "-a", "godot3", "--path", str(project)]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_project_set_up_as_the_docs_say_gets_decisions_and_lines(
    engine: str, tmp_path: Path
) -> None:
    project = tmp_path / "gatehouse"
    command = godot_command(engine, project)
    (project / "addons").mkdir(parents=True)
    for name, text in docs_files(engine).items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    (project / "addons" / "lego_embed").symlink_to(ADDON[engine])
    env = {**os.environ, "LEGO_EMBED_PYTHON": str(VENV_PYTHON)}  # the docs' override
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()  # a reader thread, so a silent game cannot block us
    threading.Thread(target=lambda: [lines.put(x) for x in process.stdout], daemon=True).start()
    output: list[str] = []
    give_up = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < give_up:
            try:
                output.append(lines.get(timeout=1.0))
            except queue.Empty:
                continue
            guards = [x for x in output if x.startswith("guard: ")]
            said = [x for x in output if x.startswith("merchant: ")]
            # done, or a failure (the docs' script asks the guard again only after a decision)
            if len(guards) >= WANT_GUARD and said or output[-1].startswith("failed: "):
                break
    finally:  # the game never quits by itself: end xvfb-run, Xvfb and Godot (one session)
        os.killpg(process.pid, signal.SIGTERM)  # xvfb-run cleans up Xvfb on TERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)  # xvfb-run has ended (and taken Xvfb with it)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # Godot does not quit on TERM
        process.wait(30)
    text = "".join(output)
    guards = [x[len("guard: "):].split(" (")[0] for x in output if x.startswith("guard: ")]
    assert len(guards) >= WANT_GUARD, text[-4000:]
    assert all(action in GUARD_ACTIONS for action in guards), guards
    said = [x[len("merchant: "):-1] for x in output if x.startswith("merchant: ")]
    pieces = [x[len("merchant token: "):-1] for x in output if x.startswith("merchant token: ")]
    assert said and pieces and "".join(pieces) == said[0]
    # no problem reported, bar the idle-time warning a slow machine's frames can earn
    problems = [x for x in output if x.startswith("lego_embed:")
                and "of idle time per frame" not in x]
    assert "failed: " not in text and not problems, text[-4000:]
    assert "%|" not in text and script_error_lines(text) == [], text[-4000:]
