"""Every configured secret is removed — case-insensitively, as a substring, URL-encoded or base64 — from
provider errors, model answers, CLI output, report files, log files and database rows.

The end-to-end tests run the real CLI and worker against the real HTTP model server of conftest.py,
which echoes the key back in upper case inside a 401 body and quotes it inside a model answer.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from healing.config import load_settings
from healing.redaction import (
    MASK,
    RedactingFilter,
    Redactor,
    configured_secrets,
    default_redactor,
    install_log_redaction,
    redact,
    url_secrets,
)
from tests.conftest import selfheal_cmd, subprocess_env
from tests.vision.conftest import Reply, openai_reply, small_context

KEY = "sk-Live-Secret-0123456789abcdef-XyZ"
WEBHOOK_TOKEN = "whk-Token-55aa66bb77cc"
# The model "quotes" the key in every form the redactor knows, in the summary and in a finding.
LEAKY_ANSWER = json.dumps({
    "summary": f"I was called with {KEY} ({KEY.upper()}); encoded {quote(KEY, safe='')}",
    "confidence": 0.7,
    "findings": [{"category": "anomaly", "severity": "medium", "region": [0, 0, 2, 2],
                  "description": f"key={KEY.lower()} b64={base64.b64encode(KEY.encode()).decode()}"}],
})
ECHO_401 = Reply(401, {"error": {"message": f"Incorrect API key provided: {KEY.upper()}. Keys look like x{KEY}x."}})


def _absent(text: str, secret: str = KEY) -> bool:
    """No form of ``secret`` in ``text``, whatever the case."""
    lowered = text.lower()
    forms = {secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode().rstrip("=")}
    return not any(form.lower() in lowered for form in forms)


# --------------------------------------------------------------------------- the redactor itself

def test_redaction_is_case_insensitive_substring_and_covers_encodings() -> None:
    r = Redactor(frozenset({KEY}))
    assert r(f"a{KEY}b") == f"a{MASK}b"
    assert r(KEY.upper()) == MASK and r(KEY.lower()) == MASK
    assert r(f"k={quote(KEY, safe='')}") == f"k={MASK}"
    assert r(base64.b64encode(KEY.encode()).decode()) in (MASK, MASK + "=")
    assert r("nothing here") == "nothing here"
    assert Redactor(frozenset({"abc"}))("abc") == "abc"  # too short to be a secret
    assert r.value({"x": [KEY, 3], KEY: None}) == {"x": [MASK, 3], MASK: None}
    assert KEY not in repr(r)


def test_url_secrets_are_the_password_and_every_query_value() -> None:
    assert url_secrets("postgresql://app:pg-Pass-99@db:5432/selfheal") == ["pg-Pass-99"]
    assert url_secrets(f"https://hooks.example/h?token={WEBHOOK_TOKEN}&sig=abcd1234") == [WEBHOOK_TOKEN, "abcd1234"]
    assert url_secrets("https://u:p%40ss@h/x") == ["p@ss"]
    assert url_secrets("sqlite:///x.db") == [] and url_secrets(None) == [] and url_secrets("http://h:bad/") == []


def test_configured_secrets_come_from_settings_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "vision_model:\n  provider: openai\n  api_key: " + KEY + "\n"
        "healing:\n  notification:\n    enabled: false\n    webhook: https://hooks.example/h?token=" + WEBHOOK_TOKEN + "\n"
        "tuning:\n  canary:\n    env:\n      HF_TOKEN: canary-Token-1234\n"
        "audit:\n  key_file: /var/lib/selfheal/audit.key\n", encoding="utf-8")
    env = {"SELFHEAL_HOME": str(tmp_path), "SELFHEAL_DATABASE_URL": "postgresql://app:pg-Pass-99@db/selfheal",
           "SELFHEAL_DASHBOARD_PASSWORD": "dash-Pass-42", "VLM_API_KEY": "vlm-Key-777", "OPENAI_API_KEY": "sk-openai-1",
           "VLM_MODEL_NAME": "llava-not-a-secret", "HOME": "/root", "SELFHEAL_AUDIT_KEY_FILE": "/etc/selfheal/key"}
    found = configured_secrets(load_settings(config, env=env), env)
    assert found == {KEY, WEBHOOK_TOKEN, "canary-Token-1234", "pg-Pass-99", "dash-Pass-42", "vlm-Key-777", "sk-openai-1"}


def test_default_redactor_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFHEAL_DASHBOARD_PASSWORD", "first-Pass-1")
    assert redact("x FIRST-PASS-1 y") == f"x {MASK} y"
    monkeypatch.setenv("SELFHEAL_DASHBOARD_PASSWORD", "second-Pass-2")
    assert redact("first-Pass-1 second-pass-2") == f"first-Pass-1 {MASK}"
    assert redact("extra-Value-9", ["EXTRA-value-9"]) == MASK
    assert default_redactor() is default_redactor()  # cached while nothing changes


def test_log_records_are_redacted_whatever_the_logger(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("VLM_API_KEY", KEY)
    log_file = tmp_path / "worker.log"
    handler = logging.FileHandler(log_file)  # a handler added after the installation, as the worker's is
    install_log_redaction()
    logging.getLogger().addHandler(handler)
    monkeypatch.setattr(logging.getLogger(), "handlers", [*logging.getLogger().handlers])
    caplog.set_level(logging.INFO)
    logging.getLogger("httpx").info("GET %s", f"https://m.example/v1?key={KEY.upper()}")
    try:
        raise RuntimeError(f"boom {KEY}")
    except RuntimeError:
        logging.getLogger("healing.worker").exception("failed with %s", KEY.lower())
    handler.close()
    assert caplog.records and _absent(caplog.text)
    assert "Traceback" in log_file.read_text() and _absent(log_file.read_text())
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "k=%s", (KEY,), None)
    assert RedactingFilter().filter(record) and record.getMessage() == f"k={MASK}"


# --------------------------------------------------------------------------- providers on a real server

def test_provider_error_echoing_the_key_in_upper_case_is_redacted(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    from healing.vision import OpenAICompatibleProvider

    caplog.set_level(logging.DEBUG)
    server.reply(ECHO_401)
    provider = OpenAICompatibleProvider("openai", f"{server.url}/v1", model="m", api_key=KEY, max_retries=0)
    result = provider.analyze(small_context())
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"  # the key really was sent
    assert result.error == (f"openai: HTTP 401 from {server.url}/v1/chat/completions: "
                            f"Incorrect API key provided: {MASK}. Keys look like x{MASK}x.")
    assert _absent(json.dumps(result.to_dict())) and _absent(caplog.text)


def test_a_model_answer_quoting_the_key_is_redacted_before_anyone_sees_it(server: Any) -> None:
    from healing.vision import OpenAICompatibleProvider

    server.reply(openai_reply(LEAKY_ANSWER))
    result = OpenAICompatibleProvider("vllm", f"{server.url}/v1", model="m", api_key=KEY).analyze(small_context())
    assert result.ok
    assert result.summary == f"I was called with {MASK} ({MASK}); encoded {MASK}"
    assert [f.description for f in result.findings] == [f"key={MASK} b64={MASK}="]
    assert _absent(json.dumps(result.to_dict()))


# --------------------------------------------------------------------------- the real CLI and worker

def _plain_png(path: Path) -> Path:
    """A 64×64 RGBA PNG without PixelRTS metadata: no hash decides it, so the model is asked."""
    import struct
    import zlib

    import numpy as np

    pixels = np.random.default_rng(7).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def _stack(tmp_path: Path, server: Any) -> tuple[dict[str, str], Path]:
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "selfheal.yaml"
    config.write_text(
        f"vision_model:\n  provider: openai\n  endpoint: {server.url}/v1\n  model: m\n  api_key: {KEY}\n"
        "  max_retries: 0\n"
        f"healing:\n  notification:\n    enabled: false\n    webhook: https://hooks.example/h?token={WEBHOOK_TOKEN}\n"
        "logging:\n  level: DEBUG\n", encoding="utf-8")
    env = subprocess_env(SELFHEAL_HOME=str(home), SELFHEAL_CONFIG=str(config))
    return env, _plain_png(tmp_path / "plain.png")


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*selfheal_cmd(), *args], env=env, capture_output=True, text=True, timeout=120)


def _text_cells(url: str) -> list[str]:
    """Every non-null value of every text-like column of every table (JSON columns included)."""
    engine = sa.create_engine(url)
    cells: list[str] = []
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        for table in inspector.get_table_names():
            for column in inspector.get_columns(table):
                if isinstance(column["type"], sa.String | sa.Text | sa.JSON) or "CHAR" in str(column["type"]).upper() \
                        or "TEXT" in str(column["type"]).upper() or "JSON" in str(column["type"]).upper():
                    rows = conn.execute(sa.text(f'SELECT "{column["name"]}" FROM "{table}"')).scalars()
                    cells += [str(v) for v in rows if v is not None]
    engine.dispose()
    return cells


def test_cli_output_reports_logs_and_database_hold_no_secret(server: Any, tmp_path: Path) -> None:
    env, image = _stack(tmp_path, server)
    report = tmp_path / "report.json"

    # 1. A provider that refuses the key and echoes it back in upper case.
    server.reply(ECHO_401)
    checked = _run(["check", str(image), "--json", "--output", str(report)], env)
    assert checked.returncode == 3, checked.stderr  # the only model failed: unknown
    assert "HTTP 401" in checked.stdout and len(server.requests) == 1  # the failure itself is reported
    assert _absent(checked.stdout + checked.stderr) and _absent(report.read_text())

    # 2. monitor checks the file and records the check; the model's answer quotes the key.
    server.reply(openai_reply(LEAKY_ANSWER))
    monitored = _run(["monitor", str(image), "--iterations", "1"], env)
    assert len(server.requests) == 2, monitored.stderr
    assert _absent(monitored.stdout + monitored.stderr)

    cells = _text_cells(f"sqlite:///{tmp_path / 'home' / 'selfheal.db'}")
    assert any(f"key={MASK} b64={MASK}=" in c for c in cells)  # the answer was stored, redacted
    assert [c for c in cells if not _absent(c)] == []
    for path in (tmp_path / "home").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".log", ".txt", ".yaml"):
            assert _absent(path.read_text(errors="replace")), path
