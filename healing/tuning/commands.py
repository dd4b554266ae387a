"""CLI commands of config tuning: ``tune observe``, ``tune replay`` and ``simulate vllm``.

``selfheal tune observe LOGFILE [--json] [--current PARAM=VALUE]...`` reads a vLLM log and prints one
element per failure (DESIGN.md §4). Exit status: 0 whenever the log could be read — finding events is
the normal result of this command, not an error (the events themselves carry ``escalate``); 3 when the
file cannot be read; 64 on a usage error (e.g. a malformed ``--current``).

``selfheal tune replay DIR [--json] [--baseline FILE] [--case GLOB]`` scores the Observer on labelled
logs (healing/tuning/replay.py): exit 0 all pass, 1 a case fails (with ``--baseline``: a case regresses),
3 bad input.

``selfheal simulate vllm [vLLM flags]`` runs the vLLM simulator (healing/tuning/simulator.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from healing.errors import EXIT_OK, UsageError
from healing.tuning.orchestration_commands import register_tune_actions
from healing.tuning.simargs import add_arguments as add_simulator_arguments


def register(sub: argparse._SubParsersAction) -> None:
    tune = sub.add_parser("tune", help="config self-healing for vLLM: observe logs",
                          description="Config self-healing for vLLM (docs/vllm_messages.md, docs/tuning.md).")
    tsub = tune.add_subparsers(dest="tune_command", metavar="ACTION", parser_class=type(tune))
    tsub.required = True
    p = tsub.add_parser("observe", help="read a vLLM log and list its failures with minimal fixes",
                        description="Read a vLLM log; print one element per failure (not per matching line) with "
                                    "the numbers read, the fix in the safe direction, or an escalation. "
                                    "Exit 0 when the log was read (events or not), 3 unreadable, 64 usage error.")
    p.add_argument("logfile", metavar="LOGFILE")
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per failure (docs/vllm_messages.md)")
    p.add_argument("--current", action="append", default=[], metavar="PARAM=VALUE",
                   help="running value, e.g. vllm.gpu_memory_utilization=0.6 (repeatable; default: the log, then vLLM defaults)")
    p.add_argument("--gpu-total-gib", type=float, metavar="GIB", help="GPU size when the log does not print it")
    p.set_defaults(func=cmd_observe)
    r = tsub.add_parser("replay", help="score the Observer on labelled logs (X.log + X.expected.json)",
                        description="Run the Observer over every labelled log X.log + X.expected.json in DIR "
                                    "(tests/tuning/replay/README.md) and print one row per case and the totals. "
                                    "Default mode: exit 1 when any case fails. With --baseline: exit 1 only "
                                    "when a case that passed in the baseline fails now (a regression). "
                                    "Exit 0 otherwise, 3 on bad input (missing DIR or label, invalid label, "
                                    "a symlink or FIFO in DIR), 64 usage error. The Observer runs with the "
                                    "default tuning settings (the labels assume the default bounds).")
    r.add_argument("dir", metavar="DIR")
    r.add_argument("--json", action="store_true", help="print one JSON object (cases, totals, exit_code)")
    r.add_argument("--baseline", metavar="FILE",
                   help="a previous `tune replay --json` output: exit 1 only for cases that passed there and fail now "
                        "(a case the baseline lacks is never a regression); both verdicts are shown")
    r.add_argument("--case", action="append", default=[], metavar="GLOB",
                   help="run only the cases whose id matches GLOB (repeatable), e.g. 'mamba_*'")
    r.set_defaults(func=cmd_replay)
    register_tune_actions(tsub)

    sim = sub.add_parser("simulate", help="run a simulated service (vLLM) for demos and canary tests")
    ssub = sim.add_subparsers(dest="simulate_command", metavar="SERVICE", parser_class=type(sim))
    ssub.required = True
    v = ssub.add_parser("vllm", help="a vLLM 0.33 server with modelled GPU memory (0.20/0.10 log formats on request)",
                        description="Accepts `vllm serve` 0.33's flags (and --config YAML), prints vLLM 0.33.0 log lines "
                                    "(0.20.0 or 0.10.2 with --log-format), fails like vLLM when the modelled GPU memory "
                                    "does not fit, else serves /health, /v1/models, /v1/completions, "
                                    "/v1/chat/completions, /version and /metrics (docs/simulator.md).")
    add_simulator_arguments(v)
    v.set_defaults(func=cmd_simulate_vllm)


def _tuning_settings() -> Any:
    from healing.config import load_settings
    from healing.tuning.actuators import parse_tuning_section

    return parse_tuning_section(load_settings().section("tuning"))


def cmd_observe(args: argparse.Namespace) -> int:
    from healing.tuning.observer import observe_file, parse_current

    try:
        current = parse_current(args.current)
    except ValueError as exc:
        raise UsageError(f"tune observe: --current: {exc}") from None
    if args.gpu_total_gib is not None and not args.gpu_total_gib > 0:
        raise UsageError("tune observe: --gpu-total-gib must be > 0")
    events = observe_file(args.logfile, settings=_tuning_settings(), current=current, gpu_total_gib=args.gpu_total_gib)
    if args.json:
        json.dump([e.to_json() for e in events], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return EXIT_OK
    if not events:
        print(f"{args.logfile}: no failures found")
        return EXIT_OK
    print(f"{'LINE':>6}  {'CLASS':<36} {'ACTION':<44} VERSION")
    for e in events:
        if e.escalate:
            action = "ESCALATE"
        elif e.seed_fix:
            action = ", ".join(f"{k}={v}" for k, v in e.seed_fix.items())
        else:
            action = "-"
        print(f"{e.line:>6}  {e.event_class:<36} {action:<44} {e.version or '-'}")
        print(f"        {e.reason}")
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from healing.tuning.replay import report_json, run_replay, table_lines

    report = run_replay(args.dir, patterns=args.case, baseline=args.baseline)
    if args.json:
        json.dump(report_json(report), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print("\n".join(table_lines(report)))
    return report.exit_code


def cmd_simulate_vllm(args: argparse.Namespace) -> int:
    from healing.tuning.simulator import run_from_args

    return run_from_args(args)
