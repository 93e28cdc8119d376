"""Engine tests: the Godot 4 engine version each run used, printed after the results (Debian sid
moves, so a reader sees which 4.x the tests ran on)."""

from __future__ import annotations

import pytest
from godot4_run import ENGINE_VERSIONS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ENGINE_VERSIONS:
        terminalreporter.write_line(f"Godot 4 engine used: {', '.join(sorted(ENGINE_VERSIONS))}")
