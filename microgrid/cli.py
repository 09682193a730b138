"""The `microgrid` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

# Each subcommand module exposes `add_parser(subparsers)`; the parser it adds
# sets `func`, which takes the parsed arguments and returns an exit status.
_SUBCOMMANDS = [
    "microgrid.coordinator.cli",
    "microgrid.coordinator.console_client",
    "microgrid.coordinator.membership.cli",
    "microgrid.flash.cli",
    "microgrid.demo",
    "microgrid.release",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microgrid",
        description="Peer-to-peer energy markets for neighbourhood microgrids.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib

    for name in _SUBCOMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
