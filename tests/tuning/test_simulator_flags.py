"""The simulator's flags as `vllm serve` 0.33 parses them, --config precedence, and the 0.33 memory arithmetic."""

from __future__ import annotations

import argparse
import io
from decimal import Decimal
from pathlib import Path

import pytest

from healing.tuning.simargs import human_readable_int, human_readable_int_or_auto
from healing.tuning.simulator import PROFILES, SimConfig, build_parser, main, plan_memory

GIB = 1024**3


def parse(*argv: str) -> argparse.Namespace:
    from healing.tuning.simargs import normalize_argv

    return build_parser().parse_args(normalize_argv(list(argv)))


@pytest.mark.parametrize("text, value", [
    ("32k", 32000), ("32K", 32768), ("25.6k", 25600), ("1M", 1048576), ("2m", 2000000), ("4096", 4096),
    (" 8192 ", 8192), ("1G", 2**30), ("1t", 10**12),
])
def test_human_readable_integers(text: str, value: int) -> None:
    assert human_readable_int(text) == value
    assert human_readable_int_or_auto(text) == value


def test_auto_and_minus_one_mean_fit_to_memory() -> None:
    assert human_readable_int_or_auto("auto") == -1 and human_readable_int_or_auto("AUTO") == -1
    assert human_readable_int_or_auto("-1") == -1
    with pytest.raises(argparse.ArgumentTypeError, match="Decimals are not allowed with binary suffixes like K. "
                                                          "Did you mean to use 1.5k instead?"):
        human_readable_int("1.5K")
    with pytest.raises(argparse.ArgumentTypeError, match="invalid int value: 'lots'"):
        human_readable_int("lots")


def test_flag_forms_parse_to_vllms_values() -> None:
    a = parse("my/model", "--max-model-len", "32K", "--max-num-batched-tokens", "8k", "--kv-cache-memory-bytes", "2G",
              "-tp", "2", "--served-model-name", "alpha", "beta", "--no-enable-chunked-prefill", "--enforce-eager")
    assert (a.model_tag, a.max_model_len, a.max_num_batched_tokens, a.kv_cache_memory_bytes) == ("my/model", 32768, 8000, 2 * GIB)
    assert (a.tensor_parallel_size, a.served_model_name, a.enable_chunked_prefill, a.enforce_eager) == (2, ["alpha", "beta"],
                                                                                                       False, True)
    b = parse("--max_model_len", "auto", "--gpu_memory_utilization=0.85", "--tensor-parallel-size", "4")
    assert (b.max_model_len, b.gpu_memory_utilization, b.tensor_parallel_size) == (-1, Decimal("0.85"), 4)
    assert parse("--max-model-len", "-1").max_model_len == -1
    assert parse("--gpu-memory-utilization", "1").gpu_memory_utilization == Decimal("1")


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv + ["--startup-delay", "0", "--port", "0"], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _non_default_line(text: str) -> str:
    [line] = [ln for ln in text.splitlines() if "non-default args:" in ln]
    return line.split("non-default args: ", 1)[1]


def test_config_file_under_the_command_line(tmp_path: Path) -> None:
    cfg = tmp_path / "vllm.yaml"
    # dashes and underscores as vLLM accepts them; keys the simulator does not model are ignored, with a note
    cfg.write_text("# production\nmodel: demo\ngpu-memory-utilization: 0.6\nmax_num_seqs: 16\nprofile: seed\n"
                   "enable-prefix-caching: true\nserved-model-name: [a, b]\n")
    code, out, err = _run(["--config", str(cfg), "--max-model-len", "4096", "--gpu-memory-utilization", "0.55"])
    assert code == 1  # the seed's card: 0.55 × 12 GiB = 6.6 GiB > 6.07 GiB free
    assert _non_default_line(out) == ("{'port': 0, 'model': 'demo', 'served_model_name': ['a', 'b'], "
                                      "'max_model_len': 4096, 'gpu_memory_utilization': 0.55, 'max_num_seqs': 16}")
    assert "simulator: --config key 'enable-prefix-caching' is not modelled by the simulator; ignored" in err
    assert "Free memory on device cuda:0 (6.07/12.0 GiB) on startup is less than desired GPU memory utilization (0.55, " \
           "6.6 GiB)." in out


def test_bad_config_and_flags_are_one_line_errors(tmp_path: Path) -> None:
    json_cfg = tmp_path / "vllm.json"
    json_cfg.write_text("{}")
    assert _run(["--config", str(json_cfg)])[0:3:2] == (2, "error: --config: config file must be of a yaml/yml type. "
                                                         "json supplied\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("max-num-seqs: many\n")
    assert _run(["--config", str(bad)])[0:3:2] == (2, f"error: --config: {bad}: argument --max-num-seqs: invalid int "
                                                      f"value: 'many'\n")
    assert _run(["--config", str(tmp_path / "missing.yaml")])[0] == 2
    assert _run(["--max-model-len", "0"])[0:3:2] == (2, "error: --max-model-len must be a positive number of tokens, "
                                                        "or auto / -1\n")
    assert _run(["--max-model-len", "auto", "--log-format", "0.10"])[2] == (
        "error: --max-model-len auto / -1 needs --log-format 0.20 or later (vLLM 0.10 has no auto-fit)\n")
    assert _run(["--tensor-parallel-size", "0"])[0] == 2


def test_033_defaults_and_arithmetic_on_the_default_card() -> None:
    plan = plan_memory(PROFILES["default"], SimConfig(max_model_len=4096))
    assert plan.ok and (plan.gpu_memory_utilization, plan.max_num_seqs, plan.max_num_batched_tokens) == (Decimal("0.92"), 256, 2048)
    # ceil(22.05 GiB × 0.92) − weights − non-torch − activation peak − CUDA graph estimate (inside the budget from 0.21)
    assert plan.requested_bytes == 21781926642 and plan.graph_in_budget
    assert plan.kv_available_bytes == 21781926642 - 3103113871 - 107374182 - 1288490188 - 461708984 == 16821239417
    assert (plan.num_gpu_blocks, plan.kv_tokens, round(plan.max_concurrency, 2)) == (36667, 586672, 143.23)
    # the 0.10 arithmetic of the same flags: gmu 0.9, graphs outside the budget
    old = plan_memory(PROFILES["default"], SimConfig(max_model_len=4096, log_format="0.10"))
    assert (old.gpu_memory_utilization, old.num_gpu_blocks, old.graph_in_budget) == (Decimal("0.9"), 36641, False)


def test_tensor_parallel_ranks_split_weights_and_kv() -> None:
    one = plan_memory(PROFILES["default"], SimConfig(max_model_len=4096))
    two = plan_memory(PROFILES["default"], SimConfig(max_model_len=4096, tensor_parallel_size=2))
    assert (two.weights_bytes, two.bytes_per_block) == (1551556935, 229376)  # 2.89 GiB / 2; 28672 B / 2 × 16 tokens
    assert two.kv_available_bytes == one.kv_available_bytes + one.weights_bytes - two.weights_bytes == 18372796353
    assert (two.num_gpu_blocks, two.kv_tokens) == (80099, 1281584)


def test_big_cards_get_vllms_bigger_batch_defaults() -> None:
    plan = plan_memory(PROFILES["hybrid"], SimConfig(Decimal("0.95")))
    assert (plan.max_num_seqs, plan.max_num_batched_tokens, plan.num_gpu_blocks, plan.failure) == (1024, 8192, 1110, None)


def test_gmu_bounds_by_version() -> None:
    d = PROFILES["default"]
    assert plan_memory(d, SimConfig(Decimal("1"), max_model_len=4096)).failure == "D"  # accepted, then too big
    assert plan_memory(d, SimConfig(Decimal("1"), max_model_len=4096, log_format="0.10")).failure == "I"
    over = plan_memory(d, SimConfig(Decimal("1.2")))
    assert over.failure == "I" and over.message == (
        "1 validation error for CacheConfig\ngpu_memory_utilization\n  Input should be less than or equal to 1 "
        "[type=less_than_equal, input_value=1.2, input_type=float]\n"
        "    For further information visit https://errors.pydantic.dev/2.12/v/less_than_equal")
    zero = plan_memory(d, SimConfig(Decimal("0")))
    assert zero.failure == "I" and "Input should be greater than 0 [type=greater_than, input_value=0.0," in (zero.message or "")


def test_auto_fit_reduces_max_model_len_to_the_kv_cache() -> None:
    plan = plan_memory(PROFILES["tight"], SimConfig(max_model_len=-1, max_num_seqs=16))
    # (0.49 GiB − the null block) / 2 MiB per 16-token block = 249 blocks → 3984 tokens
    assert (plan.failure, plan.auto_fit, plan.max_model_len, plan.num_gpu_blocks, plan.kv_tokens) == (None, "reduced", 3984, 250, 4000)
    full = plan_memory(PROFILES["default"], SimConfig(max_model_len=-1))
    assert (full.auto_fit, full.max_model_len) == ("full", 32768)


def test_kv_cache_memory_bytes_bypasses_profiling() -> None:
    plan = plan_memory(PROFILES["default"], SimConfig(max_model_len=4096, kv_cache_memory_bytes=2 * GIB))
    assert (plan.ok, plan.kv_from_flag, plan.graph_in_budget, plan.kv_available_bytes, plan.num_gpu_blocks) == (
        True, True, False, 2 * GIB, 4681)
    # the gmu check still runs at device init
    assert plan_memory(PROFILES["seed"], SimConfig(Decimal("0.6"), kv_cache_memory_bytes=GIB)).failure == "D"
    assert plan_memory(PROFILES["default"], SimConfig(max_model_len=4096, kv_cache_memory_bytes=30 * GIB)).failure == "kv_alloc"


def test_the_positional_model_wins_over_the_config_files(tmp_path: Path) -> None:
    cfg = tmp_path / "vllm.yml"
    cfg.write_text("model: from/config\nprofile: seed\ngpu_memory_utilization: 0.6\n")
    code, out, _err = _run(["from/cli", "--config", str(cfg)])
    assert code == 1 and _non_default_line(out) == ("{'model_tag': 'from/cli', 'port': 0, 'model': 'from/cli', "
                                                    "'gpu_memory_utilization': 0.6}")


def test_selfheal_simulate_vllm_reads_vllms_config_not_selfheals(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from healing import cli

    cfg = tmp_path / "vllm.yaml"
    cfg.write_text("profile: seed\ngpu-memory-utilization: 0.6\nmax-num-seqs: 16\n")
    code = cli.main(["simulate", "vllm", "--config", str(cfg), "--startup-delay", "0", "--port", "0"])
    out = capsys.readouterr().out
    assert code == 1
    assert _non_default_line(out) == "{'port': 0, 'gpu_memory_utilization': 0.6, 'max_num_seqs': 16}"


def test_batch_defaults_by_card_and_version() -> None:
    from dataclasses import replace

    from healing.tuning.simulator import batch_defaults

    b200 = replace(PROFILES["hybrid"], total_gib=Decimal("178.35"), gpu_name="NVIDIA B200")
    a100 = replace(PROFILES["hybrid"], gpu_name="NVIDIA A100-SXM4-80GB")
    assert batch_defaults(PROFILES["default"]) == (256, 2048)
    assert batch_defaults(PROFILES["hybrid"]) == (1024, 8192)
    assert batch_defaults(a100) == (256, 2048)
    assert batch_defaults(b200) == (1024, 16384) and batch_defaults(b200, "0.20") == (1024, 8192)


def test_a_port_in_use_fails_before_the_engine_starts() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = io.StringIO()
        code = main(["--host", "127.0.0.1", "--port", str(port), "--max-model-len", "4096", "--startup-delay", "0"],
                    out=out, err=out)
    text = out.getvalue()
    assert code == 1 and text.endswith("    sock.bind(addr)\nOSError: [Errno 98] Address already in use\n")
    assert "(EngineCore pid=" not in text and "non-default args: {'host': '127.0.0.1', 'port': " in text
