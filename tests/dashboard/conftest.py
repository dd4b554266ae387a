"""Fixtures for the dashboard tests: a real SQLite database seeded through the storage API, and AppTest login."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from storage.engine import dispose_engines

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
PASSWORD = "correct horse battery staple"
OPERATOR = "alice"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _dashboard_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SELFHEAL_DASHBOARD_PASSWORD", PASSWORD)
    monkeypatch.delenv("SELFHEAL_DASHBOARD_AUTH", raising=False)
    dispose_engines()
    yield
    dispose_engines()


def make_image(path: Path, payload: bytes | None = None) -> Path:
    """Write a PixelRTS image (with sidecar) of a small, recognisable payload."""
    from healing.pixelrts import write_image

    data = payload if payload is not None else bytes(range(256)) * 64 + bytes(4096)
    write_image(data, path)
    return path


def seed(home: Path, *, heartbeat: bool = True) -> dict[str, Any]:
    """Schema at head plus one image with two checks, an alert, a tuning run and a pending promotion.

    ``heartbeat`` adds a fresh beat of a pretend worker (pid 4242); end-to-end tests that start the
    real worker leave it out, since a live-looking beat from another worker makes it refuse to start.
    """
    from sqlmodel import select

    from storage import queries
    from storage.engine import session_scope
    from storage.migrate import upgrade
    from storage.models import Promotion, TuningCandidate, TuningIntent
    from storage.ratelimit import RateLimits, claim_run_slot, finish_run

    upgrade()
    image_path = make_image(home / "boot.rts.png")
    now = datetime.now(UTC)
    with session_scope() as s:
        image = queries.upsert_image(s, str(image_path), name="boot", critical=True, actor="test", now=T0)
        for k, (entropy, score, status) in enumerate([(5.5, 0.1, "healthy"), (5.9, 0.75, "warning")]):
            queries.record_check(s, {
                "image_path": str(image_path), "status": status, "confidence": 0.9,
                "metrics": {"mean_entropy": entropy, "anomaly_score": score, "hash_verified": True},
                "findings": [] if status == "healthy" else [{
                    "category": "anomaly", "severity": "medium", "description": "entropy spike in block 3",
                    "byte_range": [3072, 4096], "region": [0, 0, 16, 16], "source": "statistical"}],
                "recommendation": "watch it", "duration_ms": 12.5 + k,
            }, now=T0 + timedelta(minutes=5 * (k + 1)))
        queries.record_alert(s, kind="image.warning", severity="warning", subject=str(image_path),
                             message="boot.rts.png looks unusual", now=T0 + timedelta(minutes=11))
        if heartbeat:
            queries.beat_heartbeat(s, "worker-1", pid=4242, host="testhost", now=now)
        intent = TuningIntent(subsystem="vllm", error_class="KV_CACHE_INSUFFICIENT", values={"needed_gib": 1.5},
                              seed_fix={"vllm.gpu_memory_utilization": 0.85}, status="archived", outcome="CONFIG_TUNED",
                              created_at=now - timedelta(hours=2))
        s.add(intent)
        s.flush()
        claim = claim_run_slot(s, "vllm", RateLimits(), now - timedelta(hours=1), intent_id=intent.id, mode="prod")
        candidate = TuningCandidate(run_id=claim.run_id, params={"vllm.gpu_memory_utilization": 0.85}, preflight_ok=True,
                                    canary_gates={"ready": True, "probe_ok": True}, score=0.82,
                                    score_breakdown={"throughput": 0.5, "latency": 0.4, "memory_headroom": -0.08})
        s.add(candidate)
        s.flush()
        finish_run(s, claim.run_id, "succeeded", decision="promote", reason="candidate passed all gates",
                   now=now - timedelta(minutes=50))
        promotion = Promotion(run_id=claim.run_id, candidate_id=candidate.id, subsystem="vllm",
                              old_values={"vllm.gpu_memory_utilization": 0.9}, new_values={"vllm.gpu_memory_utilization": 0.85},
                              reason="KV cache too small at 0.9", created_at=now - timedelta(minutes=50),
                              expires_at=now + timedelta(hours=23), target_file=str(home / "vllm.yaml"))
        s.add(promotion)
        s.flush()
        promotion_id = promotion.id
        assert s.exec(select(Promotion)).first() is not None
    return {"image_id": image["id"], "image_path": str(image_path), "promotion_id": promotion_id, "run_id": claim.run_id,
            "target_file": home / "vllm.yaml"}


@pytest.fixture(params=["sqlite", "postgresql"])
def seeded(_isolated_home: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The seeded database: SQLite under SELFHEAL_HOME, then a fresh database on a real PostgreSQL
    server named by SELFHEAL_DATABASE_URL (skipped where none can be had)."""
    if request.param == "postgresql":
        monkeypatch.setenv("SELFHEAL_DATABASE_URL", request.getfixturevalue("postgres_server").fresh_database())
    return seed(_isolated_home)


def logged_in_app(page: str | None = None, *, timeout: float = 60) -> Any:
    """An AppTest of dashboard/app.py, logged in as OPERATOR, switched to ``page`` (e.g. "views/audit.py")."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=timeout)
    at.run()
    at.text_input[0].set_value(OPERATOR)
    at.text_input[1].set_value(PASSWORD)
    at.button[0].click()
    at.run()
    assert not at.exception, at.exception
    if page is not None:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def hostile_text(beacon_url: str) -> str:
    """Markdown and HTML that would make a browser fetch ``beacon_url`` or render links, if rendered."""
    return (f"![d]({beacon_url}) <img src=\"{beacon_url}?img\"> [click](http://evil.example/phish) "
            "http://evil.example/bare www.evil.example :red[x] $x^2$")


def seed_hostile(home: Path, text: str) -> dict[str, Any]:
    """Rows whose user-controlled fields — image name and path, finding, recommendation, metadata
    values, alert, audit subject/actor/payload, promotion subsystem/reason, run and intent reasons,
    worker host — all carry ``text``. The image sorts first, so the Images page opens on it."""
    from sqlmodel import select

    from storage import queries
    from storage.audit import append_event
    from storage.engine import session_scope
    from storage.models import Promotion, TuningIntent, TuningRun

    path = f"/0-hostile/{text}/boot.rts.png"
    link = "[click](http://evil.example)"
    now = datetime.now(UTC)
    with session_scope() as s:
        image = queries.upsert_image(s, path, name=text, critical=True, actor="test", now=T0)
        queries.record_check(s, {
            "image_path": path, "status": "critical", "confidence": 0.5,
            "metrics": {"data_size": text, "anomaly_score": 0.95, "hash_verified": False},
            "findings": [{"category": "structural", "severity": "high", "description": f"invalid data_size {text!r}",
                          "byte_range": None, "region": [0, 0, 4, 4], "source": "codec"}],
            "recommendation": text, "duration_ms": 3.0,
        }, image_id=image["id"], now=T0 + timedelta(minutes=1))
        queries.record_alert(s, kind="image.critical", severity="critical", subject=path, message=text,
                             now=now - timedelta(minutes=1))
        queries.beat_heartbeat(s, "worker-hostile", pid=4343, host=text, now=now)
        append_event(s, "check", text, {"note": text, "path": path}, actor=text[:255])
        intent = TuningIntent(subsystem=link, error_class="KV_CACHE_INSUFFICIENT", values={"note": text},
                              status="open", reason=text, created_at=now)
        s.add(intent)
        s.flush()
        run = TuningRun(subsystem=link, status="failed", mode="prod", reason=text, decision="escalate",
                        intent_id=intent.id, started_at=now - timedelta(minutes=5), finished_at=now)
        s.add(run)
        s.flush()
        s.add(Promotion(run_id=run.id, subsystem=link, old_values={text: 1}, new_values={text: 2}, reason=text,
                        created_at=now, expires_at=now + timedelta(hours=1), target_file=path))
        s.flush()
        assert s.exec(select(Promotion).where(Promotion.subsystem == link)).first() is not None
    return {"image_path": path, "image_id": image["id"]}
