"""Arrows point down: the runtime and the generic NPC layer never import a task (the combat task
is one user of the task-neutral API), and the model layer imports neither."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lego_embed"
FORBIDDEN = {
    "runtime": ("lego_embed.tasks",),
    "npc": ("lego_embed.tasks", "lego_embed.runtime"),
    "model": ("lego_embed.tasks", "lego_embed.runtime", "lego_embed.npc", "lego_embed.skip"),
    "skip": ("lego_embed.tasks", "lego_embed.runtime", "lego_embed.npc"),
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_never_import_upper_ones(package: str) -> None:
    files = sorted((PACKAGE / package).rglob("*.py"))
    assert files
    offending = {
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in files
        for name in imported_modules(path)
        if name.startswith(FORBIDDEN[package])
    }
    assert not offending, sorted(offending)
