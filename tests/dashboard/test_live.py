"""Live state (issue 16): a request's progress and outcome appear in place on the Images page, through
the real worker; the one-line progress of each request state."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from dashboard import data
from healing.config import load_settings
from healing.worker import Worker
from tests.dashboard.conftest import logged_in_app

T = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _plain(values: Any) -> list[str]:
    return [re.sub(r"\\(.)", r"\1", str(v.value)) for v in values]


def test_check_now_shows_waiting_then_the_outcome(seeded: dict[str, Any]) -> None:
    at = logged_in_app("views/images.py")
    at.button(key="action-check").click().run()
    [waiting] = [(i.icon, line) for i, line in zip(at.info, _plain(at.info), strict=True) if line.startswith("#")]
    assert waiting[0] == "⏳" and re.fullmatch(r"#\d+ check by alice: waiting for the worker \(\ds\)", waiting[1]), waiting
    assert any(line.startswith("Requested check (#") for line in _plain(at.success))
    assert at.session_state[f"image-busy-{seeded['image_id']}"] is True  # refreshed every 2 s meanwhile

    assert Worker(load_settings()).process_requests() == 1
    at.run()
    done = [(i.icon, line) for i, line in zip(at.success, _plain(at.success), strict=True) if line.startswith("#")]
    assert len(done) == 1 and done[0][0] == "✅", done
    assert re.fullmatch(r"#\d+ check by alice: done in \d+\.\d s: (healthy|warning|critical)", done[0][1]), done
    assert not [line for line in _plain(at.info) if line.startswith("#")]
    assert at.session_state[f"image-busy-{seeded['image_id']}"] is False


def test_request_progress_lines() -> None:
    base = {"id": 7, "kind": "accept_change", "requested_by": "bob", "claimed_by": None, "created_at": T,
            "started_at": None, "finished_at": None, "result": None}
    assert data.request_progress({**base, "status": "pending"}, T + timedelta(seconds=4)) == \
        "⏳ #7 accept change by bob: waiting for the worker (4s)"
    running = {**base, "status": "running", "claimed_by": "worker-1", "started_at": T + timedelta(seconds=1)}
    assert data.request_progress(running, T + timedelta(seconds=3)) == "⚙️ #7 accept change by bob: running on worker-1 (2s)"
    done = {**running, "status": "done", "finished_at": T + timedelta(seconds=2, milliseconds=850),
            "result": {"changed": True, "status": "healthy"}}
    assert data.request_progress(done) == "✅ #7 accept change by bob: done in 1.9 s: new golden copy accepted, now healthy"
    failed = {**running, "kind": "heal", "status": "failed", "finished_at": T + timedelta(seconds=3),
              "result": {"error": "no golden copy"}}
    assert data.request_progress(failed) == "❌ #7 heal by bob: failed in 2.0 s: no golden copy"

