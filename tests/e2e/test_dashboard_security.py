"""The dashboard under attack, in a real browser (Debian's chromium through Playwright) against the real
dashboard (a streamlit subprocess on 127.0.0.1):

  * a beacon server on 127.0.0.1 counts the requests that hostile text in names, paths, metadata,
    alerts, audit events, promotions and reasons would make the operator's browser send: 0 on every page,
    and no page renders a link to the attacker;
  * password guesses from fresh browser contexts are throttled: the 6th attempt is refused as locked,
    the right password included, and both are audited;
  * the audit CSV's download URL serves neutralised cells while logged in, and nothing after logout.
"""

from __future__ import annotations

import csv
import io
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, subprocess_env
from tests.dashboard.conftest import PASSWORD, hostile_text, seed, seed_hostile
from tests.e2e.test_dashboard_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PAGE_HEADINGS,
    STARTUP_S,
    UI_TIMEOUT_MS,
    _dashboard_argv,
    _free_port,
    _stop,
    _wait_http,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)"),
    pytest.mark.timeout(300),
]

OPERATOR = "e2e-operator"
WEBHOOK_TOKEN = "whk-Token-0099887766"
EXPORT_TTL_S = 8
PAGES = ["Overview", "Images", "Analyze", "Config tuning", "Promotions", "Audit", "Settings"]


class Beacon:
    """An HTTP server on 127.0.0.1 that answers every GET with a 1×1 PNG and counts the requests."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        beacon = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                beacon.hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                self.wfile.write(bytes.fromhex("89504e470d0a1a0a"))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/beacon.png"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def beacon() -> Iterator[Beacon]:
    server = Beacon()
    yield server
    server.stop()


@pytest.fixture
def dashboard(_isolated_home: Path) -> Iterator[dict[str, Any]]:
    """The seeded database and the dashboard alone (no worker: these tests need none)."""
    info = seed(_isolated_home)
    config = _isolated_home / "selfheal.yaml"
    config.write_text(f"healing:\n  notification:\n    enabled: false\n"
                      f"    webhook: https://hooks.example/notify?token={WEBHOOK_TOKEN}\n"
                      f"dashboard:\n  export_ttl_s: {EXPORT_TTL_S}\n", encoding="utf-8")
    env = subprocess_env(SELFHEAL_HOME=str(_isolated_home), SELFHEAL_DASHBOARD_PASSWORD=PASSWORD,
                         SELFHEAL_CONFIG=str(config))
    env.pop("SELFHEAL_DASHBOARD_AUTH", None)
    port = _free_port()
    with open(_isolated_home / "dashboard.log", "wb") as log:
        proc = subprocess.Popen(_dashboard_argv(port), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc, STARTUP_S)
            yield {**info, "url": f"http://127.0.0.1:{port}/", "home": _isolated_home}
        finally:
            _stop(proc)


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def _login(page: Any, url: str, password: str = PASSWORD, name: str = OPERATOR) -> str:
    """Submit the login form; returns "ok" or the error the form showed."""
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(url)
    page.get_by_role("textbox", name="Operator name").fill(name)
    page.locator("input[type=password]").fill(password)
    page.get_by_role("button", name="Log in").click()
    outcome = page.get_by_role("heading", name="Overview").or_(page.locator("[data-testid=stAlertContentError]"))
    outcome.first.wait_for()
    if page.get_by_role("heading", name="Overview").count():
        return "ok"
    return page.locator("[data-testid=stAlertContentError]").first.inner_text().strip()


def _go(page: Any, title: str) -> None:
    """Open a page from the sidebar, retrying a click that lands during a rerun (patient: CI is loaded)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    heading = page.get_by_role("heading", name=PAGE_HEADINGS.get(title, title)).first
    for attempt in range(3):
        page.get_by_role("link", name=title).first.click()
        try:
            heading.wait_for(timeout=UI_TIMEOUT_MS)
            return
        except PlaywrightTimeout:
            if attempt == 2:
                raise


def _audit(kind: str) -> list[dict[str, Any]]:
    from storage import queries
    from storage.engine import session_scope

    with session_scope(write=False) as s:
        return list(reversed(queries.audit_page(s, kind=kind)))


def test_hostile_text_makes_no_request_and_no_link_on_any_page(dashboard: dict[str, Any], beacon: Beacon,
                                                              browser: Any) -> None:
    seed_hostile(dashboard["home"], hostile_text(beacon.url))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    assert _login(page, dashboard["url"]) == "ok"
    evil_links: dict[str, int] = {}
    literal_headers, settings_page = 0, ""
    for title in PAGES:
        if title != "Overview":
            _go(page, title)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(1500)  # let charts, fragments and images settle
        hostile = page.locator(f"a[href*='evil.example'], a[href*='{beacon.url}'], img[src*='{beacon.url}']")
        evil_links[title] = hostile.count()
        if title == "Images":  # the hostile image is the one shown: its name is the header, as text
            literal_headers = page.get_by_role("heading", name="[click](http", exact=False).count()
        if title == "Settings":
            settings_page = page.content()
    page.close()
    print(f"\nbeacon: {len(beacon.hits)} fetches; hostile links/images per page: {evil_links}")
    assert beacon.hits == []
    assert evil_links == dict.fromkeys(PAGES, 0)
    assert literal_headers == 1
    assert WEBHOOK_TOKEN not in settings_page and "token=***" in settings_page
    # The beacon does count: the same URL fetched directly is one hit.
    assert httpx.get(beacon.url, timeout=5).status_code == 200 and beacon.hits == ["/beacon.png"]


def test_guesses_from_fresh_contexts_are_throttled_and_audited(dashboard: dict[str, Any], browser: Any) -> None:
    outcomes = []
    started = time.monotonic()
    for guess in range(8):
        context = browser.new_context()  # a fresh browser: no cookie, no session state
        outcomes.append(_login(context.new_page(), dashboard["url"], password=f"guess-{guess}"))
        context.close()
    context = browser.new_context()
    right = _login(context.new_page(), dashboard["url"])
    context.close()
    elapsed = time.monotonic() - started

    assert outcomes[:5] == ["Wrong password."] * 5
    assert all(o.startswith("Too many failed attempts: login is locked for ") for o in outcomes[5:]), outcomes
    assert right.startswith("Too many failed attempts: login is locked for "), right
    failures, locked = _audit("auth.failure"), _audit("auth.locked")
    assert [(e["subject"], e["payload"]["failures"]["client"]) for e in failures] == [(OPERATOR, n) for n in range(1, 6)]
    assert len(locked) == 4 and {e["payload"]["client"] for e in locked} == {"local"}
    assert _audit("auth.success") == []
    print(f"\nthrottle: {len(failures)} of {len(outcomes) + 1} attempts evaluated in {elapsed:.1f} s from fresh contexts")


def test_csv_export_is_neutralised_and_gone_after_logout(dashboard: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    from storage.audit import append_event
    from storage.engine import session_scope

    with session_scope() as s:
        append_event(s, "note", '=HYPERLINK("http://evil.example","open me")', {"a": 1}, actor="@attacker")
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    assert _login(page, dashboard["url"]) == "ok"
    _go(page, "Audit")

    def download() -> tuple[str, str]:
        # The button is re-created when the page re-runs: wait for a visible one, and give a loaded
        # machine a minute for the export (the 30 s default ran out once in a full suite run).
        button = page.get_by_role("button", name="Download CSV", exact=False).first
        button.wait_for(state="visible", timeout=60_000)
        with page.expect_download(timeout=60_000) as info:
            button.click()
        saved = tmp_path / "audit.csv"
        info.value.save_as(saved)
        return info.value.url, saved.read_text(encoding="utf-8")

    url, content = download()
    assert "/media/" in url
    rows = list(csv.DictReader(io.StringIO(content)))
    [note] = [r for r in rows if r["kind"] == "note"]
    assert (note["subject"], note["actor"]) == ("'=HYPERLINK(\"http://evil.example\",\"open me\")", "'@attacker")
    fresh = httpx.get(url, timeout=5)
    time.sleep(EXPORT_TTL_S + 2)
    expired = httpx.get(url, timeout=5)  # still logged in, but the export's time is up

    url, _ = download()
    generated = time.monotonic()
    while_in = httpx.get(url, timeout=5)
    page.get_by_role("button", name="Log out").click()
    page.get_by_role("textbox", name="Operator name").wait_for()
    after = httpx.get(url, timeout=5)
    assert time.monotonic() - generated < EXPORT_TTL_S  # so the logout removed it, not the expiry
    print(f"\nCSV URL status: {fresh.status_code} fresh, {expired.status_code} after {EXPORT_TTL_S} s, "
          f"{while_in.status_code} again, {after.status_code} after logout")
    assert fresh.status_code == 200 and "HYPERLINK" in fresh.text
    assert expired.status_code == 404 and "HYPERLINK" not in expired.text
    assert while_in.status_code == 200 and "HYPERLINK" in while_in.text
    assert after.status_code == 404 and "HYPERLINK" not in after.text
    assert [e["actor"] for e in _audit("auth.logout")] == [OPERATOR]
