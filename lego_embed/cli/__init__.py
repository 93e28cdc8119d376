"""`lego-embed` command line: thin wrappers that parse arguments and call the packages."""

from __future__ import annotations

import argparse
import sys

from lego_embed.cli import (
    bench_commands,
    fleet_commands,
    model_commands,
    npc_commands,
    skip_commands,
)
from lego_embed.errors import LegoEmbedError

COMMAND_MODULES = (npc_commands, model_commands, bench_commands, skip_commands, fleet_commands)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lego-embed", description=__doc__)
    subcommands = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(subcommands)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except LegoEmbedError as error:
        print(f"lego-embed: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
