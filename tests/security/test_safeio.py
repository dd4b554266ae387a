"""healing.safeio: only regular files are read, nothing is written through a symlink, one-line errors."""

from __future__ import annotations

import os
import time

import pytest

from healing.errors import InputError
from healing.safeio import WriteError, read_regular, write_atomic


def test_reads_a_regular_file_and_follows_a_symlink_to_one(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"\x00\x01payload")
    link = tmp_path / "link"
    link.symlink_to(f)
    assert read_regular(f) == b"\x00\x01payload"
    assert read_regular(link) == b"\x00\x01payload"


def test_refuses_a_symlink_when_asked(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(f)
    with pytest.raises(InputError, match="is a symbolic link"):
        read_regular(link, follow_symlinks=False)


def test_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.rts.png"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(InputError) as info:
        read_regular(fifo)
    assert time.monotonic() - start < 1.0
    assert str(info.value) == f"{fifo}: is a FIFO, not a regular file"


def test_dev_zero_through_a_symlink_is_refused(tmp_path):
    link = tmp_path / "zero.rts.png"
    link.symlink_to("/dev/zero")
    with pytest.raises(InputError, match="is a character device, not a regular file"):
        read_regular(link)


def test_directory_and_missing(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        read_regular(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        read_regular(tmp_path / "missing")


def test_size_limit_is_checked_before_reading(tmp_path):
    f = tmp_path / "big"
    f.write_bytes(b"x" * 1001)
    with pytest.raises(InputError, match="1001 bytes is over the limit of 1000"):
        read_regular(f, max_bytes=1000)
    assert read_regular(f, max_bytes=1001) == b"x" * 1001


def test_write_atomic_refuses_an_existing_symlink_and_leaves_the_target(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out.bin"
    out.symlink_to(victim)
    with pytest.raises(WriteError, match="output path is a symbolic link; refusing to write there"):
        write_atomic(out, b"attack")
    assert victim.read_bytes() == b"precious"
    assert os.path.islink(out)


def test_write_atomic_replaces_a_regular_file_with_the_mode_and_no_temp_left(tmp_path):
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    write_atomic(out, b"new", mode=0o600)
    assert out.read_bytes() == b"new"
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_write_atomic_name_too_long_is_one_line(tmp_path):
    with pytest.raises(WriteError) as info:
        write_atomic(tmp_path / ("n" * 300), b"x")
    assert str(info.value).endswith(": file name too long")
    assert sorted(tmp_path.iterdir()) == []


def test_deferred_directory_fsyncs_sync_each_directory_once_at_flush(tmp_path, monkeypatch):
    import contextvars
    import threading

    from healing import safeio
    from healing.images.golden import atomic_write_bytes

    synced: list[str] = []
    monkeypatch.setattr(safeio, "_fsync_directory_now", lambda d: synced.append(os.fspath(d)))
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    with safeio.deferred_directory_fsyncs() as syncs:
        for n in range(3):
            for d in dirs:
                atomic_write_bytes(d / f"f{n}", b"data", mode=0o600)
        # A thread running a copy of this context defers too; a plain thread (no copy) syncs at once.
        copied = threading.Thread(target=contextvars.copy_context().run,
                                  args=(safeio.fsync_directory, tmp_path / "c"))
        plain = threading.Thread(target=safeio.fsync_directory, args=(tmp_path / "d",))
        for thread in (copied, plain):
            thread.start()
            thread.join()
        assert synced == [str(tmp_path / "d")]  # the files are written, their renames not yet synced
        assert sorted(p.name for d in dirs for p in d.iterdir()) == ["f0", "f0", "f1", "f1", "f2", "f2"]
        assert syncs.flush() == 3 and synced[1:] == [str(tmp_path / n) for n in ("a", "b", "c")]
        atomic_write_bytes(dirs[0] / "late", b"x", mode=0o600)
    assert synced[4:] == [str(dirs[0])]  # the end of the block flushes what is left
    safeio.fsync_directory(dirs[1])  # outside any block: at once
    assert synced[5:] == [str(dirs[1])]
