"""One exception tree for selfheal; the CLI maps each class to an exit code (DESIGN.md §4)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_CRITICAL = 2
EXIT_UNKNOWN = 3
EXIT_USAGE = 64


class SelfHealError(Exception):
    """Base of every error selfheal raises on purpose. The message is one line meant for an operator."""

    exit_code: int = EXIT_UNKNOWN

    def __str__(self) -> str:  # keep the promise of one line, whatever a caller passed in
        return printable(" ".join(super().__str__().split()))


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord("\x1b"): "\\x1b"})


def printable(text: str) -> str:
    """``text`` with control characters (ANSI escapes, CR, LF, C1 codes) shown as escapes, for terminals."""
    return text.translate(_CONTROL)


class UsageError(SelfHealError):
    """The command line or an argument value is wrong (exit 64)."""

    exit_code = EXIT_USAGE


class InputError(SelfHealError):
    """The input cannot be judged: missing, unreadable, not a PNG, unsupported (exit 3, 'unknown')."""

    exit_code = EXIT_UNKNOWN


class CorruptedError(SelfHealError):
    """The input is damaged: truncated or CRC-broken PNG, hash mismatch, bad padding, broken metadata (exit 2)."""

    exit_code = EXIT_CRITICAL


class ConfigError(SelfHealError):
    """A configuration value is invalid (exit 3)."""

    exit_code = EXIT_UNKNOWN


class DependencyError(SelfHealError):
    """An optional package needed for this input is not installed (exit 3)."""

    exit_code = EXIT_UNKNOWN


class DatabaseError(SelfHealError):
    """The database cannot be reached or is locked beyond the busy timeout (exit 3)."""

    exit_code = EXIT_UNKNOWN


@contextmanager
def reading(path: object, what: str = "a regular file") -> Iterator[None]:
    """Turn the OSErrors of opening/reading ``path`` into one-line InputErrors (exit 3)."""
    try:
        yield
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not {what}") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
