"""The simulator's command-line flags, shared by ``python -m healing.tuning.simulator`` and ``selfheal simulate
vllm``. Standard library only at import time: the CLI imports it at start-up (PyYAML is imported only to read
``--config``).

The vLLM flags are parsed as ``vllm serve`` 0.33 parses them (vllm/engine/arg_utils.py,
vllm/entrypoints/common/cli_args.py, vllm/utils/argparse_utils.py): ``--max-model-len`` takes ``32k`` (32000),
``32K`` (32768), ``auto`` or ``-1`` (fit to memory); ``--max-num-batched-tokens`` and ``--kv-cache-memory-bytes``
take the same human-readable integers; booleans come with a ``--no-`` form; ``--served-model-name`` takes
several names; ``--config FILE`` reads a YAML of flag names (dashes or underscores) that the command line
overrides; ``--flag_name`` is read as ``--flag-name``. Defaults that vLLM derives (gpu_memory_utilization by
version, max_num_seqs and max_num_batched_tokens by card) are left ``None`` here and resolved by the simulator.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

BUILTIN_PROFILES = ("default", "seed", "tight", "hybrid")
LOG_FORMATS = ("0.10", "0.20", "0.33")
# flags of the simulator itself; every other flag is one of vLLM 0.33's (tests/tuning/test_simulator_vllm_args.py)
SIMULATOR_ONLY_FLAGS = ("--profile", "--startup-delay", "--stats-interval", "--log-format", "--sim-fail-after",
                        "--sim-watchdog-interval")
EXPLICIT = "sim_explicit"  # namespace attribute: the dests given on the command line (or by --config)


def decimal_arg(text: str) -> Decimal:
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not d.is_finite():
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}")
    return d


_SUFFIX = re.compile(r"(\d+(?:\.\d+)?)([kKmMgGtT])")
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def human_readable_int(text: str) -> int:
    """vLLM's integer form: ``1k`` = 1000, ``1K`` = 1024, ``25.6k`` = 25600; no decimals with K/M/G/T."""
    value = text.strip()
    match = _SUFFIX.fullmatch(value)
    if match:
        number, suffix = match.groups()
        if suffix in _DECIMAL:
            return int(float(number) * _DECIMAL[suffix])
        if "." in number:
            raise argparse.ArgumentTypeError(f"Decimals are not allowed with binary suffixes like {suffix}. "
                                             f"Did you mean to use {number}{suffix.lower()} instead?")
        return int(number) * _BINARY[suffix]
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


def human_readable_int_or_auto(text: str) -> int:
    """``human_readable_int`` plus ``auto`` / ``-1`` (returned as -1: fit max_model_len to the KV cache)."""
    value = text.strip()
    if value == "-1" or value.lower() == "auto":
        return -1
    return human_readable_int(value)


def _tracked(base: type[argparse.Action]) -> type[argparse.Action]:
    """An action that also records its dest as explicitly given (CLI over --config over defaults)."""

    class Tracked(base):  # type: ignore[misc, valid-type]
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                     option_string: str | None = None) -> None:
            super().__call__(parser, namespace, values, option_string)
            setattr(namespace, EXPLICIT, frozenset(getattr(namespace, EXPLICIT, None) or ()) | {self.dest})

    Tracked.__name__ = f"Tracked{base.__name__}"
    return Tracked


_Store = _tracked(argparse._StoreAction)
_Bool = _tracked(argparse.BooleanOptionalAction)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """vLLM 0.33's flags the simulator models, plus its own (marked "simulator-only")."""
    p.add_argument("model_tag", nargs="?", action=_Store, help="model name (as `vllm serve MODEL`)")
    p.add_argument("--model", action=_Store, help="model name")
    p.add_argument("--served-model-name", nargs="+", action=_Store, metavar="NAME",
                   help="names served by the API (all listed by /v1/models; the first labels the metrics)")
    p.add_argument("--gpu-memory-utilization", type=decimal_arg, action=_Store, metavar="FRACTION",
                   help="0 < x ≤ 1 (default: vLLM's for the log format: 0.92 from 0.20, 0.9 before)")
    p.add_argument("--kv-cache-memory-bytes", type=human_readable_int, action=_Store, metavar="BYTES",
                   help="KV cache size per GPU; skips memory profiling and ignores gpu_memory_utilization")
    p.add_argument("--max-num-seqs", type=int, action=_Store, metavar="N",
                   help="default as vLLM: 256, 1024 on cards of 70 GiB or more")
    p.add_argument("--max-model-len", type=human_readable_int_or_auto, action=_Store, metavar="TOKENS",
                   help="e.g. 4096, 32k (32000), 32K (32768); auto or -1 fits it to the KV cache "
                        "(default: the model's own limit)")
    p.add_argument("--max-num-batched-tokens", type=human_readable_int, action=_Store, metavar="TOKENS",
                   help="default as vLLM's API server: 2048, 8192 on cards of 70 GiB or more")
    p.add_argument("--enable-chunked-prefill", action=_Bool, default=None,
                   help="default on (vLLM's default for generative models)")
    p.add_argument("--enforce-eager", action=_Bool, default=False, help="skip CUDA graph capture")
    p.add_argument("--host", action=_Store, help="default: all interfaces (vLLM's None)")
    p.add_argument("--port", type=int, default=8000, action=_Store,
                   help="0 picks a free port (simulator extension; printed in the log)")
    p.add_argument("--dtype", default="auto", action=_Store)
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, action=_Store, metavar="N",
                   help="N ranks of the profile's card; weights and KV cache are split across them")
    p.add_argument("--seed", type=int, default=0, action=_Store)
    p.add_argument("--trust-remote-code", action=_Bool, default=False)
    # dest vllm_config: selfheal's own --config (the daemon's YAML) keeps the dest "config"
    p.add_argument("--config", dest="vllm_config", action=_Store, metavar="FILE",
                   help="a YAML of flag names (e.g. `gpu-memory-utilization: 0.85`); the command line overrides it")
    sim = p.add_argument_group("simulator-only", "flags of the simulator, not of vLLM")
    sim.add_argument("--profile", action=_Store, metavar="NAME|FILE",
                     help=f"simulator-only: GPU profile: {', '.join(BUILTIN_PROFILES)} or a JSON/YAML file "
                          f"overriding the default's fields")
    sim.add_argument("--startup-delay", type=float, action=_Store, metavar="SECONDS",
                     help="simulator-only: simulated startup time (default: the profile's)")
    sim.add_argument("--stats-interval", type=float, default=10.0, action=_Store, metavar="SECONDS",
                     help="simulator-only: seconds between stats lines (vLLM: 10)")
    sim.add_argument("--log-format", choices=LOG_FORMATS, default="0.33", action=_Store,
                     help="simulator-only: print the log lines (and use the defaults) of this vLLM version")
    sim.add_argument("--sim-fail-after", type=float, action=_Store, metavar="SECONDS",
                     help="simulator-only: after serving this long the engine dies of a CUDA OOM (as vLLM 0.33 "
                          "reports it): /health 503, requests 500, exit after the watchdog interval")
    sim.add_argument("--sim-watchdog-interval", type=float, default=5.0, action=_Store, metavar="SECONDS",
                     help="simulator-only: seconds from the engine's death to the server's exit "
                          "(vLLM's API server watchdog: 5)")


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """vLLM reads ``--flag_name`` as ``--flag-name`` (FlexibleArgumentParser)."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            key, eq, value = arg.partition("=")
            arg = key.replace("_", "-") + eq + value
        out.append(arg)
    return out


def config_file_argv(path: str, known: Callable[[str], bool]) -> tuple[list[str], list[str]]:
    """The flags a vLLM ``--config`` YAML stands for, and its keys the simulator does not model.

    As vLLM's ``FlexibleArgumentParser.load_config_file``: ``key: value`` → ``--key value``, ``true`` → ``--key``,
    ``false`` → ``--no-key`` (when that flag exists), a list → ``--key a b``, a mapping → JSON. Raises
    ValueError (one line) for a file that is not ``.yaml``/``.yml``, unreadable or not a mapping.
    """
    import json

    import yaml

    extension = path.rsplit(".", 1)[-1]
    if extension not in ("yaml", "yml"):
        raise ValueError(f"--config: config file must be of a yaml/yml type. {extension} supplied")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ValueError(f"--config: cannot read {path}: {exc.strerror or exc.__class__.__name__}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"--config: {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"--config: {path} must hold a mapping of flag names")
    argv: list[str] = []
    ignored: list[str] = []
    for raw_key, value in data.items():
        flag = "--" + str(raw_key).replace("_", "-")
        if not known(flag):
            ignored.append(str(raw_key))
            continue
        if isinstance(value, bool):
            if value:
                argv.append(flag)
            elif known(f"--no-{flag[2:]}"):
                argv.append(f"--no-{flag[2:]}")
        elif isinstance(value, list):
            if value:
                argv += [flag, *map(str, value)]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return argv, ignored
