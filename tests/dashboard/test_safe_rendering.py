"""User-controlled text is shown as text on every page (never as Markdown/HTML), secrets and URL
credentials never reach a page, and the audit CSV is safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import data
from dashboard.charts import rate_limit_figure, score_breakdown_figure
from dashboard.exports import Grant, spreadsheet_safe
from dashboard.safe import WORD_JOINER, md, plot_text, rows, text, value
from healing.config import mask_url
from tests.dashboard.conftest import hostile_text, logged_in_app, seed_hostile
from tests.dashboard.test_pages import rendered

HOSTILE = hostile_text("http://127.0.0.1:9/beacon.png")
PAGES = ["views/overview.py", "views/images.py", "views/analyze.py", "views/tuning.py", "views/promotions.py",
         "views/audit.py", "views/settings.py"]
# Unescaped forms that Markdown would turn into an image, HTML, a link, a directive or a formula.
LIVE_MARKUP = re.compile(r"(?<!\\)(\]\(|<img|://|www\.|:red\[|\$x)")


def test_md_escapes_every_markdown_and_html_metacharacter() -> None:
    assert md("![d](http://h/b.png)") == f"\\!\\[d\\]\\(http\\:{WORD_JOINER}\\/\\/h\\/b\\.png\\)"
    assert md('<img src="x">') == '\\<img src\\=\\"x\\"\\>'
    assert md("www.evil.example a@b.c") == f"www{WORD_JOINER}\\.evil\\.example a\\@{WORD_JOINER}b\\.c"
    assert md(":red[x] $y$ **b** `c` # h") == "\\:red\\[x\\] \\$y\\$ \\*\\*b\\*\\* \\`c\\` \\# h"
    assert md("line\nbreak\x1b[31m") == "line break \\[31m"
    assert md(None) == "" and md(42) == "42" and md("plain words") == "plain words"
    for sample in (HOSTILE, "a\\b", "50% of 1.5 <= 2 & {x}"):
        assert rendered(md(sample)) == sample


def test_urls_are_masked_wherever_they_are_shown() -> None:
    assert mask_url("postgresql://app:pw@db:5432/selfheal") == "postgresql://app:***@db:5432/selfheal"
    assert mask_url("https://hooks.example/h?token=abc&sig=d&flag") == "https://hooks.example/h?token=***&sig=***&flag"
    assert mask_url("https://u:p/w@h/x?a=1#frag") == "https://u:***@h/x?a=***#***"
    assert mask_url("sqlite:////var/x.db") == "sqlite:////var/x.db"
    assert text("webhook https://h/x?token=abc failed.") == "webhook https://h/x?token=*** failed."
    assert value({"hooks": ["https://h/?k=v"]}) == {"hooks": ["https://h/?k=***"]}
    assert rows([{"u": "http://a:b@h/", "n": 1}]) == [{"u": "http://a:***@h/", "n": 1}]


def test_configured_secrets_are_redacted_from_page_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFHEAL_DASHBOARD_PASSWORD", "Hunter2-Dashboard")
    assert text("typed HUNTER2-dashboard by mistake") == "typed *** by mistake"
    assert md("pw=hunter2-dashboard") == "pw\\=\\*\\*\\*"


def test_plotly_text_cannot_carry_tags() -> None:
    assert plot_text('<a href="http://evil">x</a> & y') == '&lt;a href="http://evil"&gt;x&lt;/a&gt; &amp; y'
    fig = rate_limit_figure({"subsystem": "<a href='http://evil'>v</a>", "runs_used": 1, "max_runs": 3})
    assert fig.data[0].title.text == "&lt;a href='http://evil'&gt;v&lt;/a&gt;: runs in window"
    assert list(score_breakdown_figure({"<b>x</b>": 1.0}).data[0].y) == ["&lt;b&gt;x&lt;/b&gt;"]


def test_spreadsheet_cells_are_neutralised() -> None:
    assert [spreadsheet_safe(c) for c in ("=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "ok", "a=b", 5, None)] == [
        "'=1+1", "'+1", "'-2", "'@SUM(A1)", "'\tx", "'\rx", "ok", "a=b", 5, None]
    assert Grant().active is True


def test_audit_csv_neutralises_formula_cells(seeded: dict[str, Any]) -> None:
    from storage.audit import append_event
    from storage.engine import session_scope

    with session_scope() as s:
        append_event(s, "note", "=HYPERLINK(\"http://evil\",\"x\")", {"a": 1}, actor="@attacker")
    [row] = list(csv.DictReader(io.StringIO(data.audit_csv(kind="note"))))
    assert (row["subject"], row["actor"], row["payload"]) == ("'=HYPERLINK(\"http://evil\",\"x\")", "'@attacker", '{"a":1}')


def _bodies(at: AppTest) -> list[str]:
    """Every string a page hands Streamlit's Markdown renderer: element bodies, labels, metric values."""
    found: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "success", "error"):
        found += [str(e.value) for e in getattr(at, kind)]
    found += [str(m.label) for m in at.metric] + [str(m.value) for m in at.metric]
    found += [str(e.label) for e in at.expander]
    return found


@pytest.mark.parametrize("page", PAGES)
def test_every_page_shows_hostile_text_only_as_text(seeded: dict[str, Any], _isolated_home: Path, page: str) -> None:
    hostile = seed_hostile(_isolated_home, HOSTILE)
    at = logged_in_app(page)
    bodies = _bodies(at)
    assert [b for b in bodies if LIVE_MARKUP.search(b)] == []
    shown = "\n".join(rendered(b) for b in bodies)
    expected = {  # the hostile text is on the page, literally, where each page shows it
        "views/overview.py": f"on {HOSTILE}",
        "views/images.py": f"Recommendation: {HOSTILE}",
        "views/tuning.py": f"Summary when the run finished: {HOSTILE}",
        "views/promotions.py": HOSTILE,
    }
    if page in expected:
        assert expected[page] in shown
    if page == "views/images.py":
        assert rendered(at.header[0].value) == HOSTILE
        assert hostile["image_path"] in [rendered(c.value) for c in at.caption]


def test_analyze_upload_with_a_hostile_file_name(seeded: dict[str, Any], tmp_path: Path) -> None:
    from tests.dashboard.conftest import make_image

    png = make_image(tmp_path / "up.rts.png").read_bytes()
    at = logged_in_app("views/analyze.py")
    name = "![d](http://127.0.0.1:9/beacon.png).rts.png"
    at.file_uploader(key="upload").set_value((name, png, "image/png"))
    at.run()
    assert not at.exception
    assert [b for b in _bodies(at) if LIVE_MARKUP.search(b)] == []
    assert rendered(at.subheader[0].value).endswith(": 🟢 healthy")


def test_settings_mask_the_webhook_token_and_database_password(seeded: dict[str, Any], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "selfheal.yaml"
    config.write_text("healing:\n  notification:\n    enabled: false\n"
                      "    webhook: https://hooks.example/h?token=whk-Token-123456\n"
                      "vision_model:\n  provider: vllm\n  endpoint: http://user:ep-Pass-987@models.example/v1?key=k-555555\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    at = logged_in_app("views/settings.py")
    table = at.dataframe[0].value
    shown = {(r["Section"], r["Setting"]): r["Value"] for r in table.to_dict("records")}
    assert shown[("healing", "notification.webhook")] == "https://hooks.example/h?token=***"
    assert shown[("vision_model", "endpoint")] == "http://user:***@models.example/v1?key=***"
    page = json.dumps([table.to_csv(), *_bodies(at)])
    for secret in ("whk-Token-123456", "ep-Pass-987", "k-555555"):
        assert secret.lower() not in page.lower()
