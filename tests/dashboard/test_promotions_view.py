"""Promotions and Config tuning pages (issue 16): a second operator's late decision is reported, the
confirmation says who applies, runs and intents show the promotion's real state."""

from __future__ import annotations

import re
from typing import Any

from streamlit.testing.v1 import AppTest

from dashboard import actions
from storage.engine import session_scope
from storage.models import Promotion
from tests.dashboard.conftest import APP, PASSWORD, logged_in_app


def _as(name: str, page: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    at.text_input[0].set_value(name)
    at.text_input[1].set_value(PASSWORD)
    at.button[0].click()
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def _plain(values: Any) -> list[str]:
    return [re.sub(r"\\(.)", r"\1", str(v.value)) for v in values]


def test_a_late_approval_is_reported_not_dropped(seeded: dict[str, Any]) -> None:
    pid = seeded["promotion_id"]
    bob = _as("bob", "views/promotions.py")
    bob.button(key=f"approve-{pid}").click().run()  # bob is at the confirmation …
    warning = _plain(bob.warning)[0]
    assert "Approving applies the change at once: this page writes the new values" in warning
    assert "worker" not in warning
    actions.decide_promotion(pid, False, "alice", reason="not now")  # … when alice rejects it
    bob.button(key=f"confirm-{pid}").click().run()
    texts = _plain(bob.warning)
    assert len(texts) == 1 and re.fullmatch(
        rf"Promotion #{pid} was already rejected by alice at \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC: "
        r"your approval was not recorded\.", texts[0]), texts
    with session_scope(write=False) as s:
        row = s.get(Promotion, pid)
        assert (row.status, row.decided_by) == ("rejected", "alice")


def test_a_click_on_a_card_decided_meanwhile_is_reported(seeded: dict[str, Any]) -> None:
    pid = seeded["promotion_id"]
    carol = _as("carol", "views/promotions.py")  # carol's page still shows the card
    actions.decide_promotion(pid, True, "alice")
    carol.button(key=f"reject-{pid}").click().run()
    assert re.fullmatch(rf"Promotion #{pid} was already applied by alice at .* UTC: your rejection was not recorded\.",
                        _plain(carol.warning)[0])
    assert not [b for b in carol.button if b.key == f"confirm-{pid}"]


def test_tuning_page_shows_the_promotion_state_not_the_runs_snapshot(seeded: dict[str, Any]) -> None:
    pid = seeded["promotion_id"]
    actions.decide_promotion(pid, False, "bob", reason="too risky")
    at = logged_in_app("views/tuning.py")
    intents = at.dataframe[0].value
    assert list(intents["outcome"]) == [f"REJECTED (promotion #{pid} rejected by bob)"]
    [run] = at.expander
    assert run.label.replace("\\", "").endswith(f" · promotion #{pid} rejected by bob")
    assert any(re.fullmatch(rf"Now: \*\*promotion #{pid} rejected by bob\*\* at .* UTC", m) for m in _plain(at.markdown))


def test_decided_table_has_the_note(seeded: dict[str, Any]) -> None:
    pid = seeded["promotion_id"]
    actions.decide_promotion(pid, False, "bob", reason="too risky")
    at = logged_in_app("views/promotions.py")
    assert at.dataframe[-1].value.to_dict("records")[0]["note"] == "too risky"
