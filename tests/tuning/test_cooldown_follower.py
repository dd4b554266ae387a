"""Cooldown per (subsystem, class) with an injected clock; LogFollower across rotation on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from healing.tuning.follower import FollowerState, LogFollower
from healing.tuning.observer import Cooldown


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cooldown_per_key() -> None:
    clock = FakeClock()
    cd = Cooldown(600, clock=clock)
    assert cd.allow("vllm", "kv_cache_no_memory") is True
    assert cd.allow("vllm", "kv_cache_no_memory") is False  # the same failure loop: suppressed
    assert cd.allow("vllm", "cuda_oom_torch") is True  # another class is independent
    assert cd.allow("other", "kv_cache_no_memory") is True  # another subsystem too
    clock.now += 599.5
    assert cd.remaining("vllm", "kv_cache_no_memory") == pytest.approx(0.5)
    assert cd.allow("vllm", "kv_cache_no_memory") is False
    clock.now += 0.5
    assert cd.remaining("vllm", "kv_cache_no_memory") == 0.0
    assert cd.allow("vllm", "kv_cache_no_memory") is True  # and the cooldown restarts from now
    assert cd.allow("vllm", "kv_cache_no_memory") is False
    cd.reset("vllm", "kv_cache_no_memory")
    assert cd.allow("vllm", "kv_cache_no_memory") is True
    cd.reset()
    assert cd.remaining("vllm", "cuda_oom_torch") == 0.0


def test_cooldown_zero_and_negative() -> None:
    cd = Cooldown(0, clock=FakeClock())
    assert cd.allow("vllm", "x") and cd.allow("vllm", "x")
    with pytest.raises(ValueError):
        Cooldown(-1)


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)


def test_follower_returns_only_new_complete_lines(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    log.write_text("one\ntwo\n")
    with LogFollower(log) as f:
        assert f.read_new_lines() == ["one", "two"]
        assert f.read_new_lines() == []
        append(log, "three\nfou")
        assert f.read_new_lines() == ["three"]  # "fou" is not complete yet
        append(log, "r\r\nfive\n")
        assert f.read_new_lines() == ["four", "five"]
        assert f.state.offset == log.stat().st_size and f.state.inode == log.stat().st_ino


def test_follower_start_at_end(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    log.write_text("old\n")
    f = LogFollower(log, start_at_end=True)
    assert f.read_new_lines() == []
    append(log, "new\n")
    assert f.read_new_lines() == ["new"]
    f.close()


def test_follower_rename_rotation_reads_the_rest_of_the_old_file(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    log.write_text("a1\n")
    f = LogFollower(log)
    assert f.read_new_lines() == ["a1"]
    append(log, "a2\na3-no-newline")  # written before logrotate renamed the file
    os.rename(log, tmp_path / "vllm.log.1")
    log.write_text("b1\n")
    assert f.read_new_lines() == ["a2", "a3-no-newline", "b1"]
    append(log, "b2\n")
    assert f.read_new_lines() == ["b2"]
    f.close()


def test_follower_rotation_while_missing_then_recreated(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    log.write_text("a1\n")
    f = LogFollower(log)
    assert f.read_new_lines() == ["a1"]
    os.rename(log, tmp_path / "vllm.log.1")
    assert f.read_new_lines() == []  # nothing at the path yet
    log.write_text("b1\n")
    assert f.read_new_lines() == ["b1"]
    f.close()


def test_follower_copytruncate(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    log.write_text("a1\na2\n")
    f = LogFollower(log)
    assert f.read_new_lines() == ["a1", "a2"]
    ino = log.stat().st_ino
    (tmp_path / "vllm.log.1").write_bytes(log.read_bytes())
    with log.open("r+b") as fh:
        fh.truncate(0)
    append(log, "b1\n")
    assert log.stat().st_ino == ino
    assert f.read_new_lines() == ["b1"]
    f.close()


def test_follower_state_survives_a_restart_and_finds_the_rotated_sibling(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    log.write_text("a1\n")
    f = LogFollower(log)
    assert f.read_new_lines() == ["a1"]
    saved = FollowerState.from_dict(f.state.to_dict())
    f.close()
    append(log, "a2\n")
    os.rename(log, tmp_path / "vllm.log.1")
    log.write_text("b1\n")
    g = LogFollower(log, state=saved)
    assert g.read_new_lines() == ["a2", "b1"]
    g.close()


def test_follower_cuts_overlong_lines_and_replaces_bad_bytes(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    log.write_bytes(b"x" * 25 + b"\n\xff\xfeok\n")
    f = LogFollower(log, max_line_bytes=10)
    assert f.read_new_lines() == ["x" * 10, "x" * 10, "x" * 5, "\ufffd\ufffdok"]
    f.close()


def test_follower_missing_file_is_empty(tmp_path: Path) -> None:
    f = LogFollower(tmp_path / "nope.log")
    assert f.read_new_lines() == []
    assert f.state == FollowerState(None, 0)
