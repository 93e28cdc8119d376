"""The fleet package depends on nothing above it: no torch, no other lego_embed layer."""

from __future__ import annotations

import subprocess
import sys


def test_fleet_imports_neither_torch_nor_other_layers() -> None:
    code = (
        "import sys\n"
        "import lego_embed.fleet.bench, lego_embed.fleet.replay, lego_embed.fleet.vllm_output\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(("
        "'lego_embed.model', 'lego_embed.npc', 'lego_embed.runtime', 'lego_embed.skip', "
        "'lego_embed.engines'))]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
