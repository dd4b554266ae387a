"""Whole-configuration validation (healing.config_schema): unknown keys named with a suggestion, one
line per problem, the same rules for the file and the environment, every shipped config valid."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from healing.config import (
    HealingSettings,
    HealthCheckSettings,
    LoggingSettings,
    NotificationSettings,
    PixelRTSSettings,
    VisionModelSettings,
    load_settings,
    validate_configuration,
)
from healing.config_schema import ConfigValidationError, _models
from healing.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT.parent / "shared" / "seeds" / "vlm_self_healing_os_guide.md"
if not GUIDE.is_file():  # CI's clean clone: the copy of the guide's code blocks
    GUIDE = ROOT / "tests" / "guide" / "guide_blocks.md"


def problems(tmp_path: Path, document: dict | str, env: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "selfheal.yaml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={"SELFHEAL_HOME": str(tmp_path), **(env or {})})
    return getattr(info.value, "lines", [str(info.value)])


def test_unknown_key_is_named_with_the_nearest_known_one(tmp_path: Path) -> None:
    assert problems(tmp_path, {"health_check": {"cache_tl": 60}}) == [
        "config: unknown key health_check.cache_tl (did you mean health_check.cache_ttl?)"]
    assert problems(tmp_path, {"vision_modle": {"provider": "lmstudio"}}) == [
        "config: unknown key vision_modle (did you mean vision_model?)"]
    assert problems(tmp_path, {"healing": {"notification": {"webhok": "http://h/x"}}}) == [
        "config: unknown key healing.notification.webhok (did you mean healing.notification.webhook?)"]
    assert problems(tmp_path, {"monitoring": {"images": [{"path": "a.png", "critcal": True}]}}) == [
        "config: unknown key monitoring.images[0].critcal (did you mean monitoring.images[0].critical?)"]


def test_unknown_key_without_a_close_one_lists_the_known_keys(tmp_path: Path) -> None:
    assert problems(tmp_path, {"logging": {"colour": True}}) == [
        "config: unknown key logging.colour (known keys of logging: file, format, level)"]


def test_every_problem_is_one_line(tmp_path: Path) -> None:
    document = {"health_check": {"interval": "soon", "threshold": {"warning": 2}, "cache_results": "maybe"},
                "vision_model": {"timeout": [1], "max_retries": 2.5},
                "pixelrts": {"compression_level": 12}, "loging": {"level": "INFO"}}
    assert problems(tmp_path, document) == [
        "config: vision_model.timeout must be a number, got [1]",
        "config: vision_model.max_retries must be an integer, got 2.5",
        "config: health_check.interval must be an integer, got 'soon'",
        "config: health_check.threshold.warning must be ≤ 1, got 2.0",
        "config: health_check.cache_results must be true or false, got 'maybe'",
        "config: pixelrts.compression_level must be ≤ 9, got 12",
        "config: unknown key loging (did you mean logging?)",
    ]
    assert all("\n" not in line for line in problems(tmp_path, document))


@pytest.mark.parametrize(("variable", "dotted", "value", "file_line", "env_line"), [
    ("VLM_CHECK_INTERVAL", "health_check.interval", "soon",
     "config: health_check.interval must be an integer, got 'soon'",
     "config: VLM_CHECK_INTERVAL (health_check.interval) must be an integer, got 'soon'"),
    ("VLM_WARNING_THRESHOLD", "health_check.threshold.warning", "1.5",
     "config: health_check.threshold.warning must be ≤ 1, got 1.5",
     "config: VLM_WARNING_THRESHOLD (health_check.threshold.warning) must be ≤ 1, got 1.5"),
    ("VLM_AUTO_HEAL", "health_check.auto_heal", "perhaps",
     "config: health_check.auto_heal must be true or false, got 'perhaps'",
     "config: VLM_AUTO_HEAL (health_check.auto_heal) must be true or false, got 'perhaps'"),
    ("VLM_MAX_HEAL_ATTEMPTS", "healing.max_heal_attempts", "0",
     "config: healing.max_heal_attempts must be ≥ 1, got 0",
     "config: VLM_MAX_HEAL_ATTEMPTS (healing.max_heal_attempts) must be ≥ 1, got 0"),
    ("SELFHEAL_MAX_PIXELS", "pixelrts.max_pixels", "many",
     "config: pixelrts.max_pixels must be an integer, got 'many'",
     "config: SELFHEAL_MAX_PIXELS (pixelrts.max_pixels) must be an integer, got 'many'"),
])
def test_file_and_environment_follow_the_same_rules(tmp_path: Path, variable: str, dotted: str, value: str,
                                                    file_line: str, env_line: str) -> None:
    document: dict = {}
    node = document
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    assert problems(tmp_path, document) == [file_line]
    assert problems(tmp_path, {}, {variable: value}) == [env_line]


def test_a_misspelled_variable_is_reported_and_unrelated_ones_are_not(tmp_path: Path) -> None:
    assert problems(tmp_path, {}, {"VLM_CHECK_INTERVL": "60", "SELFHEAL_MAX_PIXLES": "9"}) == [
        "config: unknown environment variable SELFHEAL_MAX_PIXLES (did you mean SELFHEAL_MAX_PIXELS?)",
        "config: unknown environment variable VLM_CHECK_INTERVL (did you mean VLM_CHECK_INTERVAL?)",
    ]
    settings_ = load_settings(env={"SELFHEAL_HOME": str(tmp_path), "VLM_SOMETHING_ELSE": "x", "SELFHEAL_BENCH_QUICK": "1",
                                   "VLM_CHECK_INTERVAL": "60"})
    assert settings_.health_check.interval == 60


def test_delegated_sections_are_checked_by_their_parsers(tmp_path: Path) -> None:
    # Unknown keys of sections whose parsers accept any key: at load, like every other key.
    assert problems(tmp_path, {"worker": {"threds": 2}}) == [
        "config: unknown key worker.threds (did you mean worker.threads?)"]
    assert problems(tmp_path, {"dashboard": {"page_sise": 20}}) == [
        "config: unknown key dashboard.page_sise (did you mean dashboard.page_size?)"]

    # Values: by each subsystem's parser, all sections at once (the CLI does this before every command).
    def validated(document: dict) -> list[str]:
        path = tmp_path / "delegated.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        settings_ = load_settings(path, env={"SELFHEAL_HOME": str(tmp_path)})
        with pytest.raises(ConfigValidationError) as info:
            validate_configuration(settings_)
        return info.value.lines

    lines = validated({"worker": {"threads": 0}, "database": {"busy_timeout_ms": 5},
                       "tuning": {"mode": "dev", "max_params_per_candidate": "two"}, "api": {"max_batch_file": 3}})
    assert lines[0].startswith("config: tuning.max_params_per_candidate must be an integer")
    assert lines[1].startswith("config: api.max_batch_file is not a known key")
    assert lines[2:] == ["config: worker.threads must be ≥ 1, got 0", "config: database.busy_timeout_ms must be ≥ 100 ms, got 5"]
    validate_configuration(load_settings(env={"SELFHEAL_HOME": str(tmp_path)}))  # defaults are valid


def test_the_cli_prints_each_problem_on_its_own_line_and_exits_3(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("health_check:\n  interval: soon\n  cach_ttl: 5\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "healing", "daemon", "status", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SELFHEAL_HOME": str(tmp_path / "home")})
    assert proc.returncode == 3
    assert proc.stderr.splitlines() == [
        "selfheal: config: health_check.interval must be an integer, got 'soon'",
        "selfheal: config: unknown key health_check.cach_ttl (did you mean health_check.cache_ttl?)",
    ]
    assert proc.stdout == ""


def _yaml_blocks(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [textwrap.dedent(m.group(2)) for m in re.finditer(r"^([ \t]*)```yaml\n(.*?)^\1```", text, re.S | re.M)]


SHIPPED = [(GUIDE, 4), (ROOT / "README.md", 1), (ROOT / "docs" / "api.md", 1), (ROOT / "docs" / "tuning.md", 1)]


@pytest.mark.parametrize(("document", "blocks"), SHIPPED, ids=[p.name for p, _ in SHIPPED])
def test_every_shipped_config_is_valid(tmp_path: Path, document: Path, blocks: int) -> None:
    found = _yaml_blocks(document)
    assert len(found) >= blocks
    for block in found:
        path = tmp_path / "block.yaml"
        path.write_text(block, encoding="utf-8")
        load_settings(path, env={"SELFHEAL_HOME": str(tmp_path)})


def test_the_guides_cache_keys_are_read(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("health_check:\n  cache_results: true\n  cache_ttl: 600\n", encoding="utf-8")
    hc = load_settings(path, env={"SELFHEAL_HOME": str(tmp_path)}).health_check
    assert (hc.cache_results, hc.cache_ttl) == (True, 600.0)


SECTIONS = {"vision_model": VisionModelSettings, "healing": HealingSettings, "logging": LoggingSettings,
            "pixelrts": PixelRTSSettings}


def _schema_fields(*path: str) -> set[str]:
    import typing

    model = _models()["root"]
    for part in path:
        annotation = model.model_fields[part].annotation
        model = next(a for a in (*typing.get_args(annotation), annotation) if hasattr(a, "model_fields"))
    return set(model.model_fields)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_schema_knows_every_settings_field(section: str) -> None:
    """A key added to a settings dataclass without the schema would be refused as unknown: catch it here."""
    assert _schema_fields(section) == {f.name for f in dataclasses.fields(SECTIONS[section])}


def test_schema_knows_every_health_check_and_notification_field() -> None:
    fields = {f.name for f in dataclasses.fields(HealthCheckSettings)} - {"warning_threshold", "critical_threshold"}
    assert _schema_fields("health_check") == fields | {"threshold"}
    assert _schema_fields("healing", "notification") == {f.name for f in dataclasses.fields(NotificationSettings)}


KEYS = {"health_check": sorted(_schema_fields("health_check")), "vision_model": sorted(_schema_fields("vision_model")),
        "healing": sorted(_schema_fields("healing")), "pixelrts": sorted(_schema_fields("pixelrts"))}


@st.composite
def typo(draw: st.DrawFn) -> tuple[str, str, str]:
    section = draw(st.sampled_from(sorted(KEYS)))
    key = draw(st.sampled_from(KEYS[section]))
    i = draw(st.integers(0, len(key) - 1))
    kind = draw(st.sampled_from(["drop", "swap", "double", "replace"]))
    if kind == "drop":
        wrong = key[:i] + key[i + 1:]
    elif kind == "swap" and i < len(key) - 1:
        wrong = key[:i] + key[i + 1] + key[i] + key[i + 2:]
    elif kind == "double":
        wrong = key[:i] + key[i] + key[i:]
    else:
        wrong = key[:i] + draw(st.sampled_from("qxz")) + key[i + 1:]
    return section, key, wrong


@settings(max_examples=60, deadline=None)
@given(typo())
def test_any_typo_of_a_key_is_refused_with_the_closest_suggestion(case: tuple[str, str, str]) -> None:
    section, key, wrong = case
    if wrong in KEYS[section] or not wrong:
        return  # the typo is another real key (or empty): nothing to report
    with pytest.raises(ConfigValidationError) as info:
        _load({section: {wrong: 1}})
    [line] = info.value.lines
    match = re.fullmatch(rf"config: unknown key {re.escape(section)}\.{re.escape(wrong)} \(did you mean "
                         rf"{re.escape(section)}\.(\w+)\?\)", line)
    assert match, line
    ratio = difflib.SequenceMatcher(None, wrong, match.group(1)).ratio()
    assert match.group(1) in KEYS[section]
    assert ratio >= difflib.SequenceMatcher(None, wrong, key).ratio() - 1e-9  # the nearest, never a farther one


def _load(document: dict) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        load_settings(path, env={"SELFHEAL_HOME": tmp})


def test_every_command_refuses_a_bad_subsystem_section(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("tuning:\n  mode: dev\n  canary:\n    comand: [vllm, serve]\nworker:\n  threads: 0\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "healing", "--config", str(config), "daemon", "status"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "SELFHEAL_HOME": str(tmp_path / "h")})
    assert proc.returncode == 3 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("selfheal: config: tuning.canary has unknown key(s) comand (expected ")
    assert lines[1] == "selfheal: config: worker.threads must be ≥ 1, got 0"


def test_a_misspelled_top_level_tuning_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    from healing.config import validate_configuration

    path = tmp_path / "c.yaml"
    path.write_text("tuning:\n  verify_window: 600\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        validate_configuration(load_settings(path, env={"SELFHEAL_HOME": str(tmp_path)}))
    assert str(err.value) == "config: unknown key tuning.verify_window (did you mean tuning.verify_window_s?)"


def test_tuning_keys_are_the_ones_the_tuning_parsers_read() -> None:
    """TUNING_KEYS (the top-level check) names exactly the keys the tuning parsers and healing.config read."""
    import inspect

    from healing.config_schema import TUNING_KEYS
    from healing.tuning import actuators, runner_config

    source = inspect.getsource(actuators.parse_tuning_section) + inspect.getsource(runner_config.parse_runner_settings)
    read = set(re.findall(r'(?:section|data|raw)\.get\("([a-z_]+)"', source)) | {"mode"}
    assert read == set(TUNING_KEYS)
