"""End to end in a real browser: Debian's chromium driven by Playwright against the real dashboard
(a streamlit subprocess on 127.0.0.1) and the real worker (`python -m healing worker`).

Log in, see the worker's heartbeat, request a check the worker carries out, upload a damaged image and
see its findings, approve a promotion, find the decision in the audit page. A screenshot of every page
lands in artifacts/screenshots/ (gitignored).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, subprocess_env
from tests.dashboard.conftest import PASSWORD, seed

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
OPERATOR = "e2e-operator"
STARTUP_S = 60
UI_TIMEOUT_MS = 30_000
PAGE_HEADINGS = {"Analyze": "Analyze an image", "Audit": "Audit trail"}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)"),
    pytest.mark.timeout(300),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dashboard exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _dashboard_argv(port: int) -> list[str]:
    from healing import cli

    if "dashboard.commands" in cli.COMMAND_MODULES:
        return [sys.executable, "-m", "healing", "dashboard", "--host", "127.0.0.1", "--port", str(port)]
    from dashboard.commands import streamlit_command

    return streamlit_command("127.0.0.1", port, 50)


def _worker_available() -> bool:
    from healing import cli

    return "healing.worker_commands" in cli.COMMAND_MODULES


@pytest.fixture
def stack(_isolated_home: Path) -> Iterator[dict[str, Any]]:
    """Seeded database, the dashboard and (when it exists) the worker, all on this SELFHEAL_HOME."""
    info = seed(_isolated_home, heartbeat=False)
    env = subprocess_env(SELFHEAL_HOME=str(_isolated_home), SELFHEAL_DASHBOARD_PASSWORD=PASSWORD)
    env.pop("SELFHEAL_DASHBOARD_AUTH", None)
    port = _free_port()
    logs = _isolated_home / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    with open(logs / "dashboard.log", "wb") as dash_log, open(logs / "worker.log", "wb") as worker_log:
        dashboard = subprocess.Popen(_dashboard_argv(port), cwd=ROOT, env=env, stdout=dash_log, stderr=subprocess.STDOUT)
        procs.append(dashboard)
        worker = None
        if _worker_available():
            worker = subprocess.Popen([sys.executable, "-m", "healing", "worker"], cwd=ROOT, env=env,
                                      stdout=worker_log, stderr=subprocess.STDOUT)
            procs.append(worker)
        try:
            _wait_http(f"http://127.0.0.1:{port}/_stcore/health", dashboard, STARTUP_S)
            yield {**info, "url": f"http://127.0.0.1:{port}/", "worker": worker, "home": _isolated_home}
        finally:
            for proc in reversed(procs):
                _stop(proc)


def _forged_image(tmp: Path) -> Path:
    """A PixelRTS image whose pixels were altered under its original metadata (hash mismatch)."""
    from healing.pixelrts import encode

    def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
        out, pos = [], 8
        while pos < len(png):
            length = int.from_bytes(png[pos:pos + 4], "big")
            out.append((png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]))
            pos += 12 + length
        return out

    payload = bytes(range(256)) * 64
    damaged = bytearray(payload)
    damaged[1000:1100] = b"\xff" * 100
    good, bad = chunks(encode(payload).png), chunks(encode(bytes(damaged)).png)
    text = {b"tEXt", b"iTXt", b"zTXt"}
    parts = [c for c in bad if c[0] not in text and c[0] != b"IEND"] + [c for c in good if c[0] in text] + [(b"IEND", b"")]
    path = tmp / "damaged.rts.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(
        len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big") for kind, body in parts))
    return path


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(600)  # let charts finish drawing
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _go(page: Any, title: str) -> None:
    """Open a page from the sidebar; a click that lands during a rerun of the previous page is retried."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    heading = page.get_by_role("heading", name=PAGE_HEADINGS.get(title, title)).first
    for attempt in range(3):
        page.get_by_role("link", name=title).first.click()
        try:
            heading.wait_for(timeout=UI_TIMEOUT_MS // 3)
            return
        except PlaywrightTimeout:
            if attempt == 2:
                raise


def _wait_request_done(home: Path, kind: str, timeout: float = 90) -> dict[str, Any]:
    from sqlmodel import select

    from storage.engine import session_scope
    from storage.models import RunRequest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(write=False) as s:
            rows = [r.model_dump() for r in s.exec(select(RunRequest).where(RunRequest.kind == kind).order_by(RunRequest.id))]
        if rows and rows[-1]["status"] in ("done", "failed"):
            return rows[-1]
        time.sleep(0.5)
    raise TimeoutError(f"the worker did not finish the {kind} request within {timeout} s")


def test_operator_journey(stack: dict[str, Any], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    damaged = _forged_image(tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.goto(stack["url"])

            # Login: nothing but the form before it.
            name_box = page.get_by_role("textbox", name="Operator name")
            name_box.wait_for()
            expect(page.get_by_text("Overview")).to_have_count(0)
            _shot(page, "00-login")
            name_box.fill(OPERATOR)
            page.locator("input[type=password]").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.get_by_role("heading", name="Overview").wait_for()

            if stack["worker"] is not None:
                expect(page.get_by_text("Running: pid")).to_be_visible(timeout=60_000)
            _shot(page, "01-overview")

            _go(page, "Images")
            expect(page.get_by_text(stack["image_path"]).first).to_be_visible()
            if stack["worker"] is not None:
                page.get_by_role("button", name="Check now").click()
                expect(page.get_by_text("Requested check (#")).to_be_visible()
                done = _wait_request_done(stack["home"], "check")
                assert done["status"] == "done", done
                assert done["requested_by"] == OPERATOR
            _shot(page, "02-images")

            _go(page, "Analyze")
            page.locator("input[type=file]").set_input_files(str(damaged))
            expect(page.get_by_text("damaged.rts.png: 🔴 critical")).to_be_visible(timeout=60_000)
            page.get_by_role("heading", name="Findings").wait_for()
            expect(page.get_by_role("button", name="Download JSON report")).to_be_visible()
            _shot(page, "03-analyze")

            _go(page, "Config tuning")
            expect(page.get_by_text("Mode prod", exact=False).first).to_be_visible()
            _shot(page, "04-tuning")

            _go(page, "Promotions")
            pid = stack["promotion_id"]
            page.get_by_role("button", name="Approve").click()
            page.get_by_role("button", name="Confirm approve").click()
            expect(page.get_by_text(f"Promotion #{pid} approved and applied by {OPERATOR}.")).to_be_visible()
            _shot(page, "05-promotions")

            _go(page, "Audit")
            expect(page.get_by_text("audit chain intact")).to_be_visible()
            subject_box = page.get_by_role("textbox", name="Subject contains (file name, path, subsystem …)")
            subject_box.fill("vllm")
            subject_box.press("Enter")
            kind_box = page.get_by_label("Kind")
            kind_box.click()
            page.get_by_role("option", name="promotion.approved").click()
            expect(page.get_by_text("1 matching event(s)", exact=False)).to_be_visible()
            _shot(page, "06-audit")

            _go(page, "Settings")
            expect(page.get_by_role("heading", name="Configuration")).to_be_visible()
            _shot(page, "07-settings")
        finally:
            browser.close()

    # The decision the browser made is in the audit trail with the operator's name.
    from storage import queries
    from storage.engine import session_scope

    with session_scope(write=False) as s:
        events = queries.audit_page(s, kind="promotion.approved")
    assert [(e["actor"], e["payload"]["promotion_id"]) for e in events] == [(OPERATOR, stack["promotion_id"])]
    assert sorted(p.name for p in SCREENSHOTS.glob("*.png")) >= ["00-login.png", "01-overview.png"]
    assert os.path.getsize(SCREENSHOTS / "06-audit.png") > 10_000
