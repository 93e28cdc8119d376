"""The game process never imports transformers: the runtime (as the Godot bridge builds it), the
`lego-embed decide` command and a decision with a spoken line all run on our own decoder."""

from __future__ import annotations

import json
import subprocess
import sys

RUNTIME_SCRIPT = """
import json, sys, time
from lego_embed.engines.godot import BridgeConfig, build_runtime
from lego_embed.tasks.combat.policy import ACTIONS
from lego_embed.tasks.combat.request import combat_request

runtime, info = build_runtime(BridgeConfig.from_mapping({"model": "bundled"}))
state = {"persona": "brute", "hp": 70, "enemy_hp": 60, "distance": 2.0,
         "enemy_last_action": "heavy_windup", "cooldowns": {"dodge": 0, "heal": 0, "heavy": 0},
         "allies": 1}
runtime.submit(combat_request("npc0", state, ACTIONS, 60000.0, output="choice_then_line"))
decisions = []
while not decisions:  # no engine events: the runtime runs freely; the test's timeout bounds it
    decisions = runtime.poll(timeout_s=1.0)
runtime.stop()
print(json.dumps({
    "action": decisions[0].action,
    "line": decisions[0].line,
    "levels": info["skip_levels"],
    "transformers": sorted(m for m in sys.modules if m.split(".")[0] == "transformers"),
}))
"""

CLI_SCRIPT = """
import json, sys
from lego_embed.cli import main
code = main(["decide", "--model", "bundled", "--samples"])
print(json.dumps({"code": code,
                  "transformers": [m for m in sys.modules if m.split(".")[0] == "transformers"]}))
"""


def run_python(script: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_runtime_decision_leaves_transformers_out() -> None:
    result = run_python(RUNTIME_SCRIPT)
    assert result["action"] is not None and result["line"]
    assert len(result["levels"]) > 1  # the skip bundle loaded too
    assert result["transformers"] == []


def test_the_decide_command_leaves_transformers_out() -> None:
    result = run_python(CLI_SCRIPT)
    assert result["code"] == 0
    assert result["transformers"] == []
