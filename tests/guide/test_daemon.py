"""Guide snippet "VLMSelfHealingDaemon": ``asyncio.run(main())`` with ``await daemon.start()`` runs until stopped.

The snippet registers kernel.rts.png and system.rts.png, then starts: both are checked at once and
the process keeps running (the next check is 300 s away) until SIGTERM, after which ``start()``
returns, ``asyncio.run`` ends and the snippet exits 0 with the worker lock released.
"""

from __future__ import annotations

import signal
import sqlite3
import time

import pytest


def _checks(home) -> list[tuple[str, str]]:
    try:
        with sqlite3.connect(home / "selfheal.db", timeout=5) as db:
            return db.execute("SELECT image_path, status FROM checks ORDER BY image_path").fetchall()
    except sqlite3.OperationalError:  # no schema yet
        return []


@pytest.mark.slow
def test_start_runs_until_sigterm(guide_dir) -> None:
    proc = guide_dir.popen("daemon")
    try:
        deadline = time.monotonic() + 60
        while len(_checks(guide_dir.home)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()  # start() did not return after the first checks
        time.sleep(1.0)
        assert proc.poll() is None, "the daemon stopped on its own"
        assert _checks(guide_dir.home) == [(str(guide_dir.cwd / "kernel.rts.png"), "healthy"),
                                           (str(guide_dir.cwd / "system.rts.png"), "healthy")]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == ""  # healthy images: the custom healing action never ran
    assert "Traceback" not in err
    from healing.worker import WorkerLock

    with WorkerLock(guide_dir.home):  # released by the clean stop
        pass
