"""Every dashboard page through streamlit.testing AppTest, against a real seeded SQLite database."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.actions import KIND_PROMOTION_APPROVED, KIND_PROMOTION_REJECTED
from storage import queries
from storage.engine import session_scope
from storage.models import Promotion
from tests.dashboard.conftest import APP, OPERATOR, PASSWORD, logged_in_app, make_image


def rendered(markdown: str) -> str:
    """What a reader sees of a Markdown body built with dashboard.safe.md: escapes and word joiners gone."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u2060", "")


def _texts(at: AppTest, kind: str) -> list[str]:
    return [rendered(str(e.value)) for e in getattr(at, kind)]


def _all_text(at: AppTest) -> str:
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "success", "error"):
        parts += _texts(at, kind)
    return "\n".join(parts)


# --------------------------------------------------------------------------- login gate

def test_nothing_but_the_login_form_before_login(seeded: dict[str, Any]) -> None:
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert _texts(at, "title") == ["selfheal — operator login"]
    assert [t.label for t in at.text_input] == ["Operator name", "Password"]
    # No data of any page leaked: no metrics, tables or charts, no image path.
    assert len(at.metric) == 0 and len(at.dataframe) == 0
    assert seeded["image_path"] not in _all_text(at)


def test_wrong_password_is_refused_and_right_one_logs_in(seeded: dict[str, Any]) -> None:
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    at.text_input[0].set_value("mallory")
    at.text_input[1].set_value("guess")
    at.button[0].click()
    at.run()
    assert _texts(at, "error") == ["Wrong password."]
    assert "operator" not in at.session_state
    at.text_input[1].set_value(PASSWORD)
    at.button[0].click()
    at.run()
    assert at.session_state["operator"] == "mallory"
    assert _texts(at, "title") == ["Overview"]


def test_no_password_configured_shows_how_to_configure(monkeypatch: pytest.MonkeyPatch, seeded: dict[str, Any]) -> None:
    monkeypatch.delenv("SELFHEAL_DASHBOARD_PASSWORD")
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert len(at.text_input) == 0
    assert "No login is configured" in _texts(at, "error")[0]


def test_password_from_streamlit_secrets(monkeypatch: pytest.MonkeyPatch, seeded: dict[str, Any]) -> None:
    monkeypatch.delenv("SELFHEAL_DASHBOARD_PASSWORD")
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.secrets["dashboard"] = {"password": "from-secrets"}
    at.run()
    at.text_input[1].set_value("from-secrets")
    at.button[0].click()
    at.run()
    assert _texts(at, "title") == ["Overview"]


def test_auth_off_is_refused_unless_bound_to_loopback(monkeypatch: pytest.MonkeyPatch, seeded: dict[str, Any]) -> None:
    from streamlit import config

    monkeypatch.setenv("SELFHEAL_DASHBOARD_AUTH", "off")
    config.set_option("server.address", "0.0.0.0")
    try:
        at = AppTest.from_file(str(APP), default_timeout=60).run()
        assert _texts(at, "title") == ["selfheal — operator login"]
        assert "is ignored: the server listens on 0.0.0.0" in _texts(at, "warning")[0]
        config.set_option("server.address", "127.0.0.1")
        at = AppTest.from_file(str(APP), default_timeout=60).run()
        assert _texts(at, "title") == ["Overview"]
        assert at.session_state["operator"] == "local-operator"
    finally:
        config.set_option("server.address", None)


def test_oidc_user_becomes_the_operator(seeded: dict[str, Any]) -> None:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.secrets["auth"] = {"client_id": "dash", "client_secret": "x", "redirect_uri": "http://127.0.0.1:8501/oauth2callback",
                          "cookie_secret": "y", "server_metadata_url": "https://idp.example/.well-known/openid-configuration"}
    at.user = {"is_logged_in": False}
    at.run()
    assert [b.label for b in at.button][0] == "Log in with single sign-on"
    at.user = {"is_logged_in": True, "name": "Bob Operator", "email": "bob@example.com"}
    at.run()
    assert at.session_state["operator"] == "Bob Operator"
    assert _texts(at, "title") == ["Overview"]


# --------------------------------------------------------------------------- pages

def test_overview_tiles_worker_alerts_and_rate_limits(seeded: dict[str, Any]) -> None:
    at = logged_in_app()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["🟢 healthy"] == "0" and metrics["🟡 warning"] == "1"
    assert metrics["🔴 critical"] == "0" and metrics["⚪ unknown"] == "0"
    assert any(s.startswith("Running: pid 4242 on testhost") for s in _texts(at, "success"))
    alerts, limits = at.dataframe[0].value, at.dataframe[1].value  # alerts full width, then the rate limits
    assert list(alerts["Message"]) == ["boot.rts.png looks unusual"]
    assert list(alerts["State"]) == ["🔔 open"] and list(alerts["Image"]) == ["boot.rts.png"]
    assert list(limits["subsystem"]) == ["vllm"] and list(limits["runs used"]) == ["1/3"]


def test_overview_empty_states(_isolated_home: Path) -> None:
    from storage.migrate import upgrade

    upgrade()
    at = logged_in_app()
    text = _all_text(at)
    assert "No images are registered yet" in text
    assert "No worker has ever reported to this database" in text
    assert "No alerts." in text
    assert _texts(at, "error")[0].startswith("**No worker** has ever reported to this database")
    assert "Nothing needs you now" in text


def test_acknowledge_alert_records_operator(seeded: dict[str, Any]) -> None:
    at = logged_in_app()
    [alert_id] = [a["id"] for a in queries_alerts()]
    at.button(key=f"ack-{alert_id}").click()
    at.run()
    assert [b for b in at.button if b.key == f"ack-{alert_id}"] == []  # no longer in "needs you now"
    assert list(at.dataframe[0].value["State"]) == [f"✔ acknowledged by {OPERATOR}"]
    with session_scope(write=False) as s:
        alert = queries.recent_alerts(s)[0]
        event = queries.audit_page(s, kind="alert.acknowledged")[0]
    assert alert["acknowledged"] is True and alert["acknowledged_by"] == OPERATOR
    assert event["actor"] == OPERATOR


def queries_alerts() -> list[dict[str, Any]]:
    with session_scope(write=False) as s:
        return queries.recent_alerts(s)


def test_images_list_detail_and_check_now_request(seeded: dict[str, Any]) -> None:
    at = logged_in_app("views/images.py")
    table = at.dataframe[0].value
    assert list(table["Path"]) == [seeded["image_path"]] and list(table["Name"]) == ["boot"]
    assert list(table["Status"]) == ["🟡 warning"]
    findings = at.dataframe[1].value
    assert list(findings["byte range"]) == ["[3072, 4096)"]
    assert list(findings["region (x, y, w, h)"]) == ["0, 0, 16, 16"]
    assert len(at.get("image")) == 3  # findings overlay, entropy, edges: PNG pictures, not Plotly heatmaps
    parity = [c.value.replace("\\", "") for c in at.caption if c.value.startswith("Parity")]
    assert parity == ["Parity: none (heals need the golden copy; `selfheal parity create` adds it)"]  # seeded without one
    assert len(at.get("plotly_chart")) == 4  # the status timeline and the three statistics trends
    at.button(key="action-check").click()
    at.run()
    assert any(s.startswith("Requested check (#") for s in _texts(at, "success"))
    with session_scope(write=False) as s:
        pending = queries.pending_requests(s)
    assert [(r["kind"], r["target"], r["requested_by"]) for r in pending] == [("check", seeded["image_path"], OPERATOR)]


def test_heal_now_needs_confirmation(seeded: dict[str, Any]) -> None:
    at = logged_in_app("views/images.py")
    at.button(key="action-heal").click()
    at.run()
    with session_scope(write=False) as s:
        assert queries.pending_requests(s) == []
    assert any("Really heal the file: rebuild it from its parity, else restore its golden copy" in w
               for w in _texts(at, "warning"))
    at.button(key="confirm-yes").click()
    at.run()
    with session_scope(write=False) as s:
        assert [r["kind"] for r in queries.pending_requests(s)] == ["heal"]


def test_images_empty_state(_isolated_home: Path) -> None:
    from storage.migrate import upgrade

    upgrade()
    at = logged_in_app("views/images.py")
    assert "No images are registered yet" in _texts(at, "info")[0]


def test_analyze_upload_through_the_widget(seeded: dict[str, Any], tmp_path: Path) -> None:
    png = make_image(tmp_path / "up.rts.png").read_bytes()
    at = logged_in_app("views/analyze.py")
    assert at.selectbox(key="vision-model").options == ["(statistics only)", "statistical"]
    at.file_uploader(key="upload").set_value(("up.rts.png", png, "image/png"))
    at.run()
    assert not at.exception
    assert _texts(at, "subheader")[0] == "up.rts.png: 🟢 healthy"
    assert {m.label: m.value for m in at.metric}["hash verified"] == "True"
    assert len(at.get("image")) == 5 and len(at.get("plotly_chart")) == 0  # opaque PNG pictures
    assert at.get("download_button")[0].proto.label == "Download JSON report"


def test_analyze_refuses_a_non_png_upload(seeded: dict[str, Any]) -> None:
    at = logged_in_app("views/analyze.py")
    at.file_uploader(key="upload").set_value(("evil.png", b"GIF89a not a png", "image/png"))
    at.run()
    assert _texts(at, "error") == ["Upload refused: not a PNG file (PixelRTS images are PNGs: .rts.png)"]


def test_tuning_page_shows_mode_limits_intents_runs(seeded: dict[str, Any]) -> None:
    at = logged_in_app("views/tuning.py")
    text = _all_text(at)
    assert "Mode **prod**" in text
    intents = at.dataframe[0].value
    assert list(intents["class"]) == ["KV_CACHE_INSUFFICIENT"]
    assert list(intents["outcome"]) == [f"CONFIG_TUNED (promotion #{seeded['promotion_id']} waiting for review)"]
    candidates = at.dataframe[1].value
    assert list(candidates["params"]) == ['{"vllm.gpu_memory_utilization": 0.85}']
    assert list(candidates["pre-flight"]) == ["pass"] and list(candidates["score"]) == [0.82]
    # The run started an hour ago (give or take the seconds this test takes): 5 h of the 6 h cooldown remain.
    assert re.search(r"cooldown left \*\*(4h59m|5h00m)\*\*", text), text
    assert re.search(r"next run: \*\*\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\*\*", text), text


@pytest.mark.parametrize("approve", [True, False])
def test_promotion_decision_with_confirmation_is_audited(seeded: dict[str, Any], approve: bool) -> None:
    pid = seeded["promotion_id"]
    at = logged_in_app("views/promotions.py")
    changes = at.dataframe[0].value
    assert changes.to_dict("records") == [{"parameter": "vllm.gpu_memory_utilization", "current": "0.9",
                                           "proposed": "0.85", "changed": True}]
    at.text_input(key=f"note-{pid}").set_value("looks right")
    at.button(key=f"{'approve' if approve else 'reject'}-{pid}").click()
    at.run()
    with session_scope(write=False) as s:
        assert s.get(Promotion, pid).status == "pending_review"  # nothing happens before confirmation
    at.button(key=f"confirm-{pid}").click()
    at.run()
    verb = "approved and applied" if approve else "rejected"
    assert _texts(at, "success") == [f"Promotion #{pid} {verb} by {OPERATOR}."]
    with session_scope(write=False) as s:
        row = s.get(Promotion, pid)
        events = queries.audit_page(s, kind=KIND_PROMOTION_APPROVED if approve else KIND_PROMOTION_REJECTED)
    assert (row.status, row.decided_by, row.reason) == ("applied" if approve else "rejected", OPERATOR, "looks right")
    assert [(e["actor"], e["subject"], e["payload"]["promotion_id"]) for e in events] == [(OPERATOR, "vllm", pid)]
    assert "Nothing to review." in _all_text(at)
    assert list(at.dataframe[-1].value["decided by"]) == [OPERATOR]


def test_audit_page_filters_paginates_exports_and_verifies(seeded: dict[str, Any]) -> None:
    at = logged_in_app("views/audit.py")
    assert _texts(at, "success")[0].startswith("audit chain intact: ")
    everything = at.dataframe[0].value
    at.selectbox(key="audit-kind").set_value("check")
    at.run()
    checks = at.dataframe[0].value
    assert list(checks["Kind"]) == ["check", "check"]
    assert list(checks["Subject"]) == [seeded["image_path"]] * 2
    assert len(everything) > len(checks)
    csv_button = at.get("download_button")[0]  # its data is a callable, run on click (dashboard.exports)
    assert csv_button.proto.label == "Download CSV (2 events)"


def test_audit_page_reports_a_broken_chain(seeded: dict[str, Any]) -> None:
    from storage.engine import get_engine

    with get_engine().begin() as conn:
        conn.exec_driver_sql("UPDATE audit_events SET actor = 'intruder' WHERE seq = 2")
    at = logged_in_app("views/audit.py")
    # The wording of the verdict is storage.audit's (being reworded for the keyed chain); the page shows it.
    message = _texts(at, "error")[0]
    assert message.startswith("audit chain broken") and "event 2 (seq 2)" in message, message


def test_settings_page_is_a_grouped_table_with_secrets_masked(seeded: dict[str, Any], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "selfheal.yaml"
    config.write_text("vision_model:\n  provider: openai\n  api_key: sk-very-secret\n"
                      "tuning:\n  reload_command: [curl, 'https://ops:hunter2-pass@deploy.example/reload?token=tok-777']\n"
                      "  promotion_ttl_s: 3600\n  webhook_token: wh-secret-1\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    at = logged_in_app("views/settings.py")
    assert len(at.json) == 0  # no JSON dumps any more
    table = at.dataframe[0].value
    cells = {(r["Section"], r["Setting"]): r["Value"] for r in table.to_dict("records")}
    assert cells[("vision_model", "api_key")] == "***"
    assert cells[("vision_model", "provider")] == "openai"
    assert cells[("tuning", "promotion_ttl_s")] == "3600.0"
    assert cells[("tuning", "rate_limits.max_runs")] == "3"  # defaults filled in: the effective values
    assert cells[("tuning", "scoring.metrics.throughput.key")] != "***"  # a metric's name, not a secret
    assert cells[("tuning", "webhook_token")] == "***"
    reload = cells[("tuning", "reload_command")]
    assert reload.startswith("curl, https://") and "hunter2-pass" not in reload and "tok-777" not in reload
    assert cells[("dashboard", "page_size")] == "50"
    assert list(table["Section"])[0] == "general"
    everything = table.to_csv()
    assert "sk-very-secret" not in everything and "wh-secret-1" not in everything
    assert {m.label: m.value for m in at.metric}["vision model"] == "openai"
    at.multiselect(key="settings-sections").set_value(["tuning"]).run()
    assert set(at.dataframe[0].value["Section"]) == {"tuning"}
