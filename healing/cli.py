"""The `selfheal` command line (also `python -m healing`).

Each area of the product contributes its sub-commands from a small `commands` module that imports
only the standard library at top level, so `selfheal --help` starts fast; heavy libraries (NumPy,
OpenCV, SQLAlchemy, …) are imported inside the command functions.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence

from healing.errors import EXIT_UNKNOWN, EXIT_USAGE, SelfHealError, printable

# Modules that add sub-commands, in the order they appear in --help.
COMMAND_MODULES = [
    "healing.pixelrts.commands",
    "storage.commands",
    "healing.images.commands",
    "healing.worker_commands",
    "healing.analysis.commands",
    "healing.tuning.commands",
    "healing.tuning.orchestration_commands",
    "dashboard.commands",
    "healing.api.commands",
    "healing.demo_commands",
]

DESCRIPTION = """\
selfheal keeps two kinds of things alive: boot/OS images stored as PixelRTS v2 PNGs (checked,
localised, healed from a golden copy) and service configuration, first vLLM (observed, tuned in a
canary, promoted or escalated). Run `selfheal COMMAND --help` for the options of one command.

exit codes: 0 healthy/valid, 1 warning, 2 critical/corrupted/could not heal,
            3 unknown (unreadable or invalid input), 64 command-line usage error
"""

EPILOG = """\
examples:
  selfheal encode kernel.bin kernel.rts.png      pack a binary into a PixelRTS v2 PNG
  selfheal validate kernel.rts.png               structure + sha256 check (exit 0/2/3)
  selfheal decode kernel.rts.png -o kernel.bin --verify

environment: SELFHEAL_HOME (default ~/.selfheal), SELFHEAL_CONFIG, SELFHEAL_DATABASE_URL, SELFHEAL_MODE
"""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors; our contract says 64 (DESIGN.md §4)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="selfheal",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML configuration file (default: $SELFHEAL_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from healing.redaction import install_log_redaction

    install_log_redaction()  # before any command logs: no configured secret reaches a log line
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        os.environ["SELFHEAL_CONFIG"] = args.config
    try:
        return int(args.func(args) or 0)
    except SelfHealError as exc:
        return _fail(args, str(exc), exc.exit_code)
    except KeyboardInterrupt:
        print("selfheal: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the contract: one line on stderr, never a traceback
        if os.environ.get("SELFHEAL_DEBUG"):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        return _fail(args, f"internal error: {type(exc).__name__}: {msg} (set SELFHEAL_DEBUG=1 for a traceback)", EXIT_UNKNOWN)


def _fail(args: argparse.Namespace, message: str, exit_code: int) -> int:
    """One line on stderr; with ``--json`` also a JSON error object on stdout, so scripts always get JSON."""
    from healing.redaction import redact

    message = printable(redact(message))
    print(f"selfheal: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "exit_code": exit_code}))
    return exit_code


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
