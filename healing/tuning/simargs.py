"""The simulator's command-line flags (vLLM's names), shared by ``python -m healing.tuning.simulator`` and
``selfheal simulate vllm``. Standard library only: the CLI imports it at start-up.
"""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation

BUILTIN_PROFILES = ("default", "seed", "tight")


def decimal_arg(text: str) -> Decimal:
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not d.is_finite():
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}")
    return d


def add_arguments(p: argparse.ArgumentParser) -> None:
    """vLLM's flags the simulator models, plus three of its own (--profile, --startup-delay, --stats-interval)."""
    p.add_argument("model_tag", nargs="?", help="model name (as `vllm serve MODEL`)")
    p.add_argument("--model", help="model name")
    p.add_argument("--served-model-name", help="name reported by /v1/models (default: the model)")
    p.add_argument("--gpu-memory-utilization", type=decimal_arg, default=Decimal("0.9"), metavar="FRACTION")
    p.add_argument("--max-num-seqs", type=int, default=256, metavar="N")
    p.add_argument("--max-model-len", type=int, default=None, metavar="TOKENS")
    p.add_argument("--enforce-eager", action="store_true", help="skip CUDA graph capture")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed in the log)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--tensor-parallel-size", type=int, default=1, choices=[1])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--profile", metavar="NAME|FILE",
                   help=f"GPU profile: {', '.join(BUILTIN_PROFILES)} or a JSON/YAML file overriding the default's fields")
    p.add_argument("--startup-delay", type=float, metavar="SECONDS", help="simulated startup time (default: the profile's)")
    p.add_argument("--stats-interval", type=float, default=10.0, metavar="SECONDS", help="seconds between stats lines (vLLM: 10)")
