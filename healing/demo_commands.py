"""`selfheal demo`: load demonstration data (see healing/demo.py)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="load demo images, a healed corruption and a pending promotion",
                       description="Create demo PixelRTS images under $SELFHEAL_HOME/demo, register and check them, "
                                   "damage one and heal it, and run one config-tuning cycle against the vLLM "
                                   "simulator that leaves a promotion pending review. Loads only into an empty home: "
                                   "with data already there it changes nothing.")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from healing.config import load_settings
    from healing.demo import run_demo

    run_demo(load_settings())
    return 0
