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
    "healing.images.parity_commands",
    "healing.worker_commands",
    "healing.node_commands",
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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``command``, the modules up to the one that defines it only (start-up time:
    `selfheal validate` needs no other area's sub-commands)."""
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
        if command is not None and command in sub.choices:
            break
    _accept_config_everywhere(sub)
    return parser


def _accept_config_everywhere(sub: argparse._SubParsersAction) -> None:
    """``--config FILE`` also after the sub-command (``selfheal daemon start --config FILE``, as in the guide)."""
    for command in set(sub.choices.values()):
        if "--config" not in command._option_string_actions:
            command.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                                 help="YAML configuration file (default: $SELFHEAL_CONFIG)")
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_config_everywhere(action)


def main(argv: Sequence[str] | None = None) -> int:
    from healing.redaction import install_log_redaction

    install_log_redaction()  # before any command logs: no configured secret reaches a log line
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_word(argv))
    args = parser.parse_args(argv)
    if args.config:
        os.environ["SELFHEAL_CONFIG"] = args.config
    try:
        _apply_configuration()
        return int(args.func(args) or 0)
    except SelfHealError as exc:
        return _fail(args, str(exc), exc.exit_code, getattr(exc, "lines", None))
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


def _command_word(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the first word that is not an option or --config's value)."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _apply_configuration() -> None:
    """Validate the whole configuration file before any command runs, and apply its ``logging`` section
    (level, file, format) to every command that logs."""
    if not os.environ.get("SELFHEAL_CONFIG"):
        return  # without a file: defaults and variables, which load_settings checks where they are read
    from healing.config import load_settings, validate_configuration

    settings = load_settings()
    validate_configuration(settings)
    if settings.raw.get("logging"):
        from healing.worker import configure_logging

        configure_logging(settings)


def _fail(args: argparse.Namespace, message: str, exit_code: int, lines: Sequence[str] | None = None) -> int:
    """One line on stderr (one per problem when ``lines`` lists several); with ``--json`` also a JSON
    error object on stdout, so scripts always get JSON."""
    from healing.redaction import redact

    message = printable(redact(message))
    for line in lines or [message]:
        print(f"selfheal: {printable(redact(line))}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "exit_code": exit_code}))
    return exit_code


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
