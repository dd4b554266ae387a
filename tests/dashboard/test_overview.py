"""The Overview as a "needs you now" list (issue 16): open alerts with the image's name and a link,
promotions waiting with their expiry, images marked bad, a worker-down banner, the alert lifecycle."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from storage import queries
from storage.engine import session_scope
from storage.models import Image, WorkerHeartbeat
from tests.dashboard.conftest import logged_in_app


def _links(at: Any) -> list[tuple[str, str, str]]:
    return [(p.proto.label, p.proto.page, p.proto.query_string) for p in at.get("page_link")]


def _errors(at: Any) -> list[str]:
    return [str(e.value) for e in at.error]


def test_needs_you_now_names_and_links_what_needs_attention(seeded: dict[str, Any]) -> None:
    with session_scope() as s:
        queries.record_alert(s, kind="image.critical", severity="critical", subject=seeded["image_path"],
                             message="boot.rts.png is critical: IDAT CRC mismatch")
        queries.record_alert(s, kind="image.healed", severity="info", subject=seeded["image_path"], message="healed")
        image = s.get(Image, seeded["image_id"])
        image.marked_bad, image.consecutive_heal_failures = True, 3
        s.add(image)
    at = logged_in_app()
    assert _links(at) == [
        ("🔴 boot.rts.png", "images", f"image={seeded['image_id']}"),  # critical first
        ("🟡 boot.rts.png", "images", f"image={seeded['image_id']}"),
        (f"✅ Promotion #{seeded['promotion_id']} waits for review", "promotions", f"promotion={seeded['promotion_id']}"),
        ("⛔ boot.rts.png", "images", f"image={seeded['image_id']}"),
    ]
    text = "\n".join(re.sub(r"\\(.)", r"\1", str(m.value)) for m in at.markdown)
    assert "boot.rts.png is critical: IDAT CRC mismatch" in text
    assert re.search(r"gpu_memory_utilization 0\.9 → 0\.85 · \*\*expires in (22h59m|23h00m)\*\*", text), text
    assert "marked bad after 3 failed heal(s)" in text
    assert at.get("plotly_chart") == [] or len(at.get("plotly_chart")) == 0  # no bar chart repeating the tiles
    states = at.dataframe[0].value
    assert list(states["State"]) == ["ℹ️ info", "🔔 open", "🔔 open"]  # the info event waits for nobody
    assert len([b for b in at.button if b.key and b.key.startswith("ack-")]) == 2


def test_alerts_resolve_when_the_image_is_healthy_again(seeded: dict[str, Any]) -> None:
    later = datetime.now(UTC) + timedelta(seconds=5)
    with session_scope() as s:
        queries.record_check(s, {"image_path": seeded["image_path"], "status": "healthy", "confidence": 1.0,
                                 "metrics": {"hash_verified": True}, "findings": [], "recommendation": "",
                                 "duration_ms": 3.0}, now=later)
    with session_scope(write=False) as s:
        [alert] = queries.alerts_with_state(s)
        assert (alert["state"], alert["resolved_at"]) == ("resolved", later.replace(microsecond=later.microsecond))
        assert queries.alerts_with_state(s, states=("open",)) == []
    at = logged_in_app()
    assert [link for link in _links(at) if link[1] == "images"] == []
    assert list(at.dataframe[0].value["State"])[0].startswith("✅ resolved ")


def test_a_worker_that_missed_two_beats_is_a_red_banner_at_the_top(seeded: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    with session_scope() as s:
        beat = s.get(WorkerHeartbeat, "worker-1")
        beat.info, beat.last_beat = {"heartbeat_interval": 10.0}, now - timedelta(seconds=15)
        s.add(beat)
    at = logged_in_app()
    assert not [e for e in _errors(at) if "Worker down" in e]  # 15 s: within two 10 s intervals
    with session_scope() as s:
        beat = s.get(WorkerHeartbeat, "worker-1")
        beat.last_beat = now - timedelta(seconds=25)
        s.add(beat)
    at.run()
    first = _errors(at)[0].replace("\\-", "-")
    assert re.fullmatch(r"\*\*Worker down:\*\* worker-1 \(pid 4242 on testhost\) has not reported for 2\ds "
                        r"\(expected every 10s\)\. Nothing is checked or healed and requests wait; "
                        r"`selfheal daemon status` tells more\.", first), first
