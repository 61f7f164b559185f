"""The `driving` command line (also `python -m driving`).

Each verb lives in its own module under `driving/commands/`, exposing
`register(subparsers)` which adds a parser whose `func(args) -> int` runs it.
Bad input (`UserError`/`ValueError`) and a full disk (ENOSPC/EDQUOT) print one line and
exit with code 2 (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> module in driving.commands; the order is the order of `driving --help`.
COMMANDS = {
    "collect": "collect",
    "import": "importer",
    "dataset": "dataset",
    "train": "train",
    "eval": "evaluate",
    "compare": "compare",
    "explain": "explain",
    "export": "export",
    "preview": "preview",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    from driving import __version__

    parser = argparse.ArgumentParser(
        prog="driving",
        description="liquid-drive: lane keeping from a camera with liquid Neural Circuit Policies.",
    )
    parser.add_argument("--version", action="version", version=f"liquid-drive {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(f"driving.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"driving.commands.{module_name}":
                raise
            continue  # verb not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:  # UserError is a ValueError
        print(f"driving {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ConnectionError as exc:  # e.g. no CARLA server at host:port
        print(f"driving {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk anywhere is the user's to fix: one line, exit 2
        from driving.outputs import disk_full_message, is_disk_full

        if not is_disk_full(exc):
            raise
        print(f"driving {args.command}: error: {disk_full_message(exc, getattr(args, 'out', None))}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
