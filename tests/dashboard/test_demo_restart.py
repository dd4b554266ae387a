"""Restarting `make run` must not revert an approved change (issue 16): the demo loads only into an empty home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from dashboard.actions import decide_promotion
from healing.config import load_settings
from healing.demo import existing_state, run_demo
from storage.engine import dispose_engines, session_scope
from storage.models import Alert, AuditHead, Check, Image, Promotion

ROOT = Path(__file__).resolve().parents[2]


def state() -> dict:
    with session_scope(write=False) as session:
        return {
            "promotions": [(p.id, p.status, p.decided_by) for p in session.query(Promotion).order_by(Promotion.id)],
            "alerts": session.execute(sa.select(sa.func.count()).select_from(Alert.__table__)).scalar_one(),
            "checks": session.execute(sa.select(sa.func.count()).select_from(Check.__table__)).scalar_one(),
            "images": [(i.path, i.golden_sha256) for i in session.query(Image).order_by(Image.id)],
            "audit_seq": session.get(AuditHead, 1).seq,
        }


@pytest.mark.slow
def test_a_second_demo_load_changes_nothing_after_an_approval(_isolated_home: Path):
    settings = load_settings()
    first = run_demo(settings)
    target = Path(first["tuning"]["target_config"])
    promotion_id = first["tuning"]["promotion"]["id"]
    assert existing_state(settings) == {"images": 4, "tuning intents": 1, "tuning runs": 1, "promotions": 1,
                                        "alerts": 2}
    approved = decide_promotion(promotion_id, True, "alice")
    assert approved["status"] == "applied"
    applied_bytes = target.read_bytes()
    assert applied_bytes == b"gpu-memory-utilization: 0.9\nmax-num-seqs: 16\nmax-model-len: 4096\n"
    before = state()
    dispose_engines()

    # what `make run` does at every start: `selfheal demo` in a child process
    env = dict(os.environ, SELFHEAL_HOME=str(_isolated_home))
    done = subprocess.run([sys.executable, "-m", "healing", "demo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"demo: not loaded: {_isolated_home} already has data (4 images, 1 tuning intents, 1 tuning runs, "
        "1 promotions, 2 alerts); the demo loads only into an empty home (point SELFHEAL_HOME at a new folder "
        "for a fresh one)"]
    assert target.read_bytes() == applied_bytes
    assert state() == before
    assert before["promotions"] == [(promotion_id, "applied", "alice")]


def test_an_empty_home_has_no_state(_isolated_home: Path):
    from storage.migrate import upgrade

    upgrade()
    assert existing_state(load_settings()) == {}
