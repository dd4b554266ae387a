"""The simulator accepts vLLM 0.33's flags only (its own are documented as simulator-only), with 0.33's defaults.

Reads the argument definitions from the unpacked vLLM 0.33 source (never installed) with ``ast``: the fields of
EngineArgs / AsyncEngineArgs / FrontendArgs / BaseFrontendArgs become ``--field-name`` (booleans also
``--no-field-name``), plus every literal flag given to ``add_argument``. Directory: $SELFHEAL_VLLM_SRC, default
/tmp/vllm-src/0.33.0.
"""

from __future__ import annotations

import argparse
import ast
import os
from pathlib import Path

import pytest

from healing.tuning.simargs import SIMULATOR_ONLY_FLAGS
from healing.tuning.simulator import build_parser

SRC = Path(os.environ.get("SELFHEAL_VLLM_SRC", "/tmp/vllm-src/0.33.0"))
FILES = ("vllm/engine/arg_utils.py", "vllm/entrypoints/common/cli_args.py")
ARG_CLASSES = {"EngineArgs", "AsyncEngineArgs", "FrontendArgs", "BaseFrontendArgs"}


def _require_source() -> None:
    missing = [f for f in FILES if not (SRC / f).is_file()]
    if missing:
        pytest.skip(f"vLLM 0.33 source not unpacked at {SRC} (set SELFHEAL_VLLM_SRC): missing {', '.join(missing)}")


def vllm_flags(root: Path) -> set[str]:
    """Every option string `vllm serve` 0.33 defines, read from its source."""
    flags: set[str] = set()
    for rel in FILES:
        tree = ast.parse((root / rel).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name in ARG_CLASSES:
                for stmt in node.body:
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                        name = stmt.target.id.replace("_", "-")
                        flags.add(f"--{name}")
                        if "bool" in ast.unparse(stmt.annotation):
                            flags.add(f"--no-{name}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "add_argument"):
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("-"):
                        flags.add(arg.value)
    return flags


def simulator_vllm_flags() -> set[str]:
    out: set[str] = set()
    for action in build_parser()._actions:  # noqa: SLF001 - the parser's own definitions
        if isinstance(action, argparse._HelpAction):  # noqa: SLF001
            continue
        out.update(action.option_strings)
    return out - set(SIMULATOR_ONLY_FLAGS)


def test_every_vllm_flag_the_simulator_accepts_is_one_of_vllm_033s() -> None:
    _require_source()
    defined = vllm_flags(SRC)
    # the reader really reads the source: flags it must find, including the explicit short forms
    assert {"--max-model-len", "--gpu-memory-utilization", "--kv-cache-memory-bytes", "-tp", "--config",
            "--no-enforce-eager", "--host", "--port", "--served-model-name"} <= defined
    ours = simulator_vllm_flags()
    assert len(ours) == 20
    assert sorted(ours - defined) == []


def test_the_simulator_only_flags_are_not_vllms_and_say_so_in_help() -> None:
    _require_source()
    assert set(SIMULATOR_ONLY_FLAGS) & vllm_flags(SRC) == set()
    marked = sorted(a.option_strings[0] for a in build_parser()._actions  # noqa: SLF001
                    if (a.help or "").startswith("simulator-only: "))
    assert marked == sorted(SIMULATOR_ONLY_FLAGS)


def _field_default(path: Path, cls: str, name: str) -> str:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name:
                    assert stmt.value is not None
                    return ast.unparse(stmt.value)
    raise AssertionError(f"{cls}.{name} not found in {path}")


def test_defaults_are_vllm_033s() -> None:
    _require_source()
    assert _field_default(SRC / "vllm/config/cache.py", "CacheConfig", "gpu_memory_utilization") == \
        "Field(default=0.92, gt=0, le=1)"
    assert _field_default(SRC / "vllm/entrypoints/common/cli_args.py", "FrontendArgs", "host") == "None"
    assert _field_default(SRC / "vllm/entrypoints/common/cli_args.py", "FrontendArgs", "port") == "8000"
    args = build_parser().parse_args([])
    # None: vLLM's default, resolved by version (gmu 0.92 for 0.33) and card (max_num_seqs, batched tokens)
    assert (args.host, args.port, args.gpu_memory_utilization, args.max_num_seqs, args.log_format) == \
        (None, 8000, None, None, "0.33")
