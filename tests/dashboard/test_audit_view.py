"""The Audit page (issue 16): ordered by sequence, subject as a substring, actor filter, "hide routine",
payloads as one-line summaries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from dashboard import data
from storage.audit import append_event
from storage.engine import session_scope
from tests.dashboard.conftest import T0, logged_in_app


def _add_events(image_path: str) -> None:
    with session_scope() as s:
        # The timestamp is taken before the sequence number: a later seq can carry an earlier time.
        append_event(s, "heal", image_path, {"action": "restore_golden", "healthy": True,
                                             "quarantine": {"path": "/q/x", "bytes": 42}}, "worker",
                     now=T0 + timedelta(hours=3))
        append_event(s, "promotion.approved", "vllm", {"promotion_id": 7, "reason": "more KV cache " * 20,
                                                       "values": [1, 2, 3]}, "bob", now=T0 + timedelta(hours=2))


def test_audit_page_orders_by_sequence_and_filters(seeded: dict[str, Any]) -> None:
    _add_events(seeded["image_path"])
    at = logged_in_app("views/audit.py")
    table = at.dataframe[0].value
    seqs = list(table["Seq"])
    assert seqs == sorted(seqs, reverse=True) and seqs[0] == max(seqs)
    assert list(table["Kind"][:3]) == ["auth.success", "promotion.approved", "heal"]

    at.text_input(key="audit-subject").set_value("boot.rts.png").run()  # a file name finds its full path's events
    by_name = at.dataframe[0].value
    assert set(by_name["Subject"]) == {seeded["image_path"]}
    assert list(by_name["Kind"]).count("check") == 2 and "heal" in list(by_name["Kind"])

    at.toggle(key="audit-hide-routine").set_value(True).run()
    assert "check" not in set(at.dataframe[0].value["Kind"])
    assert "heal" in set(at.dataframe[0].value["Kind"])

    at.text_input(key="audit-subject").set_value("").run()
    at.selectbox(key="audit-actor").set_value("bob").run()
    only_bob = at.dataframe[0].value
    assert list(only_bob["Actor"]) == ["bob"] and list(only_bob["Kind"]) == ["promotion.approved"]
    summary = only_bob["Details"][0]
    assert summary.startswith("promotion_id=7 · reason=more KV cache more KV cache")
    assert summary.endswith("… · values=[3 items]")
    assert "{" not in summary and len(summary) < 240
    at.selectbox(key="audit-detail").set_value(int(only_bob["Seq"][0])).run()
    assert at.json[0].value.count("more KV cache") == 20


def test_payload_summary_is_one_readable_line() -> None:
    assert data.payload_summary({"action": "restore_golden", "healthy": True, "quarantine": {"path": "/q/x", "bytes": 42},
                                 "files": ["a"], "none": None}) == (
        "action=restore_golden · healthy=True · quarantine.path=/q/x · quarantine.bytes=42 · files=a")
    assert data.payload_summary({"blob": "x" * 500}) == "blob=" + "x" * 59 + "…"
    long = data.payload_summary({f"k{i}": "v" * 50 for i in range(10)})
    assert len(long) == 240 and long.endswith("…")
    assert data.payload_summary({"line": "a\nb\tc"}) == "line=a b c"


def test_audit_filters_subject_is_literal_and_routine_is_kept_when_asked(seeded: dict[str, Any]) -> None:
    args = data.audit_filter_args(subject="%", hide_routine=True)
    assert data.audit_count(**args) == 0  # % is a literal character, not a wildcard
    assert data.audit_count(**data.audit_filter_args(kind="check", hide_routine=True)) == 2
    assert data.audit_count(**data.audit_filter_args(kind="check", actor="nobody")) == 0
