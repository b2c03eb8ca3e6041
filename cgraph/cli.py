"""The `cgraph` command. Each subcommand is a thin layer over the public API; errors print
one line and exit non-zero, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import cgraph
from cgraph.errors import CgraphError

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cgraph", description="Inspect, check and draw cgraph models (.pb files).")
    parser.add_argument("--version", action="version", version=f"cgraph {cgraph.__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except (CgraphError, OSError) as e:
        print(f"cgraph {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
