"""CLI commands of the codec: encode, decode, info, validate (filled in by the codec work)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    return None
