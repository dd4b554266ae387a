"""The Promotions page rolls back an applied promotion: confirmed first, then the file is back and audited."""

from __future__ import annotations

import re
from typing import Any

from dashboard.actions import decide_promotion
from storage import queries
from storage.engine import session_scope
from storage.models import Promotion
from tests.dashboard.conftest import OPERATOR, logged_in_app


def test_rollback_of_an_applied_promotion_is_confirmed_and_audited(seeded: dict[str, Any]) -> None:
    pid = seeded["promotion_id"]
    target = seeded["target_file"]
    assert not target.exists()  # the seeded promotion writes a new file: rolling back removes it
    assert decide_promotion(pid, True, OPERATOR)["status"] == "applied"
    assert target.read_text() == "gpu-memory-utilization: 0.85\n"

    at = logged_in_app("views/promotions.py")
    at.button(key=f"rollback-{pid}").click()
    at.run()
    assert target.exists()  # nothing happens before confirmation
    at.text_input(key=f"rollback-note-{pid}").set_value("p95 latency doubled")
    at.button(key=f"confirm-rollback-{pid}").click()
    at.run()

    # as a reader sees it (dashboard.safe.md escapes Markdown and joins words)
    assert [re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", str(e.value)).replace("\u2060", "") for e in at.success] == [
        f"Promotion #{pid} rolled back by {OPERATOR}."]
    assert not target.exists()
    with session_scope(write=False) as s:
        row = s.get(Promotion, pid)
        events = queries.audit_page(s, kind="promotion.rolled_back")
    assert (row.status, row.reason) == ("rolled_back", "p95 latency doubled")
    assert [(e["actor"], e["payload"]["promotion_id"], e["payload"]["automatic"]) for e in events] == [(OPERATOR, pid, False)]
    assert not [b for b in at.button if b.key == f"rollback-{pid}"]  # no longer applied: no action
