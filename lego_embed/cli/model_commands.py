"""CLI commands about the model itself: `profile`."""

from __future__ import annotations

import argparse


def register(subcommands: argparse._SubParsersAction) -> None:
    """Adds the model subcommands (the executor's owner fills them in)."""
