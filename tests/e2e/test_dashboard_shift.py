"""A shift in the real browser (issue 16): Debian's chromium via Playwright against the real dashboard
and the real worker. What an operator must see: the deep link kept through the login, the login kept
through F5, the worker-down banner, the critical image's name with its link, the pending promotion,
and an accepted change turning healthy. Full-page screenshots land in artifacts/screenshots/shift-*.png.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, subprocess_env
from tests.dashboard.conftest import PASSWORD, seed
from tests.e2e.test_dashboard_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SCREENSHOTS,
    STARTUP_S,
    UI_TIMEOUT_MS,
    _dashboard_argv,
    _free_port,
    _go,
    _shot,
    _stop,
    _wait_http,
)

OPERATOR = "shift-operator"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)"),
    pytest.mark.timeout(300),
]


@pytest.fixture
def home_env(_isolated_home: Path) -> dict[str, str]:
    env = subprocess_env(SELFHEAL_HOME=str(_isolated_home), SELFHEAL_DASHBOARD_PASSWORD=PASSWORD)
    env.pop("SELFHEAL_DASHBOARD_AUTH", None)
    return env


@pytest.fixture
def dashboard(_isolated_home: Path, home_env: dict[str, str]) -> Iterator[str]:
    port = _free_port()
    log = _isolated_home / "dashboard.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(_dashboard_argv(port), cwd=ROOT, env=home_env, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc, STARTUP_S)
            yield f"http://127.0.0.1:{port}"
        finally:
            _stop(proc)


def _browser(pw: Any) -> Any:
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def _login(page: Any) -> None:
    page.get_by_role("textbox", name="Operator name").fill(OPERATOR)
    page.locator("input[type=password]").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def test_deep_link_reload_banner_and_needs_you_now(_isolated_home: Path, dashboard: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    from storage import queries
    from storage.engine import session_scope
    from storage.models import WorkerHeartbeat

    info = seed(_isolated_home, heartbeat=False)
    with session_scope() as s:
        queries.record_alert(s, kind="image.critical", severity="critical", subject=info["image_path"],
                             message="boot.rts.png is critical: IDAT CRC mismatch in chunk 3")
        s.add(WorkerHeartbeat(worker_id="worker-frozen", pid=4242, host="node-7", state="running",
                              started_at=datetime.now(UTC) - timedelta(hours=1),
                              last_beat=datetime.now(UTC) - timedelta(seconds=45), info={"heartbeat_interval": 10.0}))
    with sync_playwright() as pw:
        browser = _browser(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.goto(f"{dashboard}/promotions")  # a deep link, before logging in
            page.get_by_role("textbox", name="Operator name").wait_for()
            expect(page.get_by_text("Waiting for review")).to_have_count(0)
            _login(page)
            page.get_by_role("heading", name="Promotions").wait_for()  # not Overview
            expect(page.get_by_text(f"Promotion #{info['promotion_id']}").first).to_be_visible()
            assert "/promotions" in page.url and "session=" in page.url
            _shot(page, "shift-01-promotions-after-login")

            page.reload()  # F5 keeps the login
            page.get_by_role("heading", name="Promotions").wait_for()
            expect(page.get_by_role("textbox", name="Operator name")).to_have_count(0)

            _go(page, "Overview")
            banner = page.get_by_text("Worker down:", exact=False).first
            expect(banner).to_be_visible()
            title_box = page.get_by_role("heading", name="Overview").bounding_box()
            assert banner.bounding_box()["y"] < title_box["y"] + 200  # at the top, not below the fold
            expect(page.get_by_text("worker-frozen (pid 4242 on node-7) has not reported")).to_be_visible()
            critical = page.get_by_role("link", name="🔴 boot.rts.png")
            expect(critical).to_be_visible()
            # .first: the alerts table below can carry the same text in its grid cells (rendered or not, by timing)
            expect(page.get_by_text("boot.rts.png is critical: IDAT CRC mismatch in chunk 3").first).to_be_visible()
            expect(page.get_by_role("link", name=f"✅ Promotion #{info['promotion_id']} waits for review")).to_be_visible()
            expect(page.get_by_text("expires in", exact=False).first).to_be_visible()
            _shot(page, "shift-02-overview")

            critical.click()
            page.get_by_role("heading", name="Images").wait_for()
            expect(page.get_by_role("heading", name="boot")).to_be_visible()
            assert f"image={info['image_id']}" in page.url
            expect(page.locator("[data-testid=stImage] img").first).to_be_visible()
            _shot(page, "shift-03-image")

            for title in ("Config tuning", "Audit", "Settings", "Analyze"):
                _go(page, title)
                _shot(page, f"shift-04-{title.lower().replace(' ', '-')}")
            page.get_by_role("button", name="Log out").click()
            page.get_by_role("textbox", name="Operator name").wait_for()
        finally:
            browser.close()
    assert (SCREENSHOTS / "shift-02-overview.png").stat().st_size > 20_000


def test_an_accepted_change_turns_healthy(_isolated_home: Path, home_env: dict[str, str], dashboard: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    from healing.config import load_settings
    from healing.images.registry import register_image
    from healing.pixelrts import write_image
    from storage.migrate import upgrade

    upgrade()
    image = _isolated_home / "imgs" / "app.rts.png"
    image.parent.mkdir()
    write_image(b"version one " * 4000, image)
    image_id = register_image(image, settings=load_settings())["image"]["id"]
    write_image(b"version two, deployed on purpose " * 1500, image)  # changed, and valid
    with open(_isolated_home / "worker.log", "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "healing", "worker"], cwd=ROOT, env=home_env, stdout=out,
                                  stderr=subprocess.STDOUT)
        try:
            with sync_playwright() as pw:
                browser = _browser(pw)
                try:
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.set_default_timeout(UI_TIMEOUT_MS)
                    page.goto(f"{dashboard}/images?image={image_id}")
                    _login(page)
                    page.get_by_role("heading", name="Images").wait_for()
                    expect(page.get_by_text("Recommendation: review the change: re-register the image to accept it",
                                            exact=False)).to_be_visible(timeout=60_000)
                    # the first *visible* match: a fragment re-run can leave a hidden copy of the status first
                    expect(page.locator("text=🟡 warning >> visible=true").first).to_be_visible()
                    _shot(page, "shift-05-unexpected-change")
                    page.get_by_role("button", name="Accept change (new baseline)").click()
                    page.get_by_role("button", name="Confirm").click()
                    # the outcome appears in place, without a reload
                    expect(page.get_by_text("accept change by shift-operator: done in", exact=False)).to_be_visible(
                        timeout=60_000)
                    expect(page.get_by_text("new golden copy accepted, now healthy", exact=False)).to_be_visible()
                    expect(page.locator("text=🟢 healthy >> visible=true").first).to_be_visible()
                    _shot(page, "shift-06-accepted-healthy")
                finally:
                    browser.close()
        finally:
            _stop(worker)
