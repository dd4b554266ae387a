"""The batched check cycle (issue 15): one read, hashing ahead in threads, one transaction per batch for the
unchanged images, the full per-image check for everything else — with the same results as that path."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import sqlalchemy as sa

import healing.worker as worker_module
from healing.config import load_settings
from healing.images.registry import register_image
from healing.images.service import ImageService
from healing.pixelrts import write_image
from healing.worker import Worker
from storage.audit import verify_chain
from storage.engine import get_engine, session_scope
from storage.models import Alert, Check, CheckSummary
from tests.worker._procs import rows


def summaries() -> list[tuple[int, int]]:
    with session_scope(write=False) as session:
        return sorted(session.exec(sa.select(CheckSummary.image_id, CheckSummary.unchanged_checks)).all())


def _findings(result: dict) -> list[tuple]:
    return [(f["category"], f["severity"], f["source"], f["description"]) for f in result.get("findings") or []]


class CommitCounter:
    """Counts committed transactions on the configured engine."""

    def __init__(self) -> None:
        self.engine = get_engine()
        self.count = 0

    def _on_commit(self, _conn: object) -> None:
        self.count += 1

    def __enter__(self) -> CommitCounter:
        sa.event.listen(self.engine, "commit", self._on_commit)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "commit", self._on_commit)


def test_cycle_results_equal_the_per_image_path(settings, make_image):
    names = ["fine1", "fine2", "changed", "deleted", "notpng", "swapped"]
    paths = {n: make_image(f"{n}.rts.png") for n in names}
    ids = {n: register_image(p, settings=settings)["image"]["id"] for n, p in paths.items()}
    worker = Worker(load_settings())
    first, overruns = worker.check_cycle(due_only=False)
    assert (overruns, sorted(r.status for r in first), sum(r.reused for r in first)) == (0, ["healthy"] * 6, 0)

    write_image(b"another valid payload " * 300, paths["changed"])
    paths["deleted"].unlink()
    paths["notpng"].write_bytes(b"this is not a png at all")
    target = paths["swapped"].with_name("elsewhere.rts.png")
    paths["swapped"].rename(target)
    os.symlink(target, paths["swapped"])

    with CommitCounter() as commits:
        records, overruns = Worker(load_settings()).check_cycle(due_only=False)
    got = {Path(r.image_path).name.split(".")[0]: r for r in records}
    assert overruns == 0 and sorted(got) == sorted(names)
    assert {n: (got[n].status, got[n].reused) for n in names} == {
        "fine1": ("healthy", True), "fine2": ("healthy", True), "changed": ("warning", False),
        "deleted": ("critical", False), "notpng": ("unknown", False), "swapped": ("critical", False)}
    assert _findings(got["deleted"].result) == [
        ("structural", "high", "registry", f"{paths['deleted']}: registered image is missing")]
    assert _findings(got["swapped"].result) == [
        ("security", "high", "registry", f"{paths['swapped']}: registered image was replaced by a symbolic link "
                                         f"(to {target}); the link is not followed")]
    assert [f[:3] for f in _findings(got["changed"].result)] == [("structural", "medium", "baseline"),
                                                                  ("security", "high", "baseline")]
    # The two unchanged images: one read, one batch write; each of the four others: its own check (a
    # read and a write with its alert), so the count stays bounded whatever the number of unchanged images.
    assert commits.count <= 2 + 4 * 2

    # One check row per image per cycle, except the unchanged healthy ones: counted in check_summaries
    # (storage.retention), their newest row (the first cycle's) standing for them.
    checks = rows(Check)
    changed = [ids[n] for n in names if not n.startswith("fine")]
    assert sorted(c["image_id"] for c in checks) == sorted([*ids.values(), *changed])
    assert {n: got[n].check_id for n in ("fine1", "fine2")} == {
        n: next(c["id"] for c in checks if c["image_id"] == ids[n]) for n in ("fine1", "fine2")}
    assert summaries() == [
        (ids["fine1"], 1), (ids["fine2"], 1)]
    reference = ImageService(load_settings())
    for name in names:
        again = reference.check(ids[name], allow_heal=False)
        assert again.status == got[name].status, name
        assert _findings(again.result) == _findings(got[name].result), name
    alerted = sorted(Path(a["subject"]).name.split(".")[0] + ":" + a["kind"] for a in rows(Alert))
    assert alerted == ["changed:image.unexpected_change", "deleted:image.critical", "notpng:image.unknown",
                       "swapped:image.security"]
    with session_scope(write=False) as session:
        report = verify_chain(session)
    assert (report.ok, report.findings) == (True, ())


def test_unchanged_images_cost_one_read_and_one_write_per_batch(settings, make_image, monkeypatch):
    monkeypatch.setattr(worker_module, "CYCLE_BATCH", 4)
    for n in range(10):
        register_image(make_image(f"img{n:02d}.rts.png"), settings=settings)
    worker = Worker(load_settings())
    worker.check_cycle(due_only=False)
    with CommitCounter() as commits:
        records, overruns = worker.check_cycle(due_only=False)
    assert (len(records), sum(r.reused for r in records), overruns) == (10, 10, 0)
    assert commits.count == 1 + 3  # the read, then batches of 4 + 4 + 2
    with session_scope(write=False) as session:
        checks = session.exec(sa.select(Check.image_id, Check.reused_analysis, Check.status)).all()
        assert verify_chain(session).ok is True
    assert sorted(checks) == [(i, False, "healthy") for i in range(1, 11)]  # unchanged: counted, no new row
    assert summaries() == [(i, 1) for i in range(1, 11)]
    # An image whose newest row is older than storage.retention.samples_every_s gets a sampled row.
    worker.settings.raw.setdefault("storage", {})["retention"] = {"samples_every_s": 0.001}
    records, _ = worker.check_cycle(due_only=False)
    with session_scope(write=False) as session:
        sampled = session.exec(sa.select(Check.image_id).where(Check.reused_analysis.is_(True))).scalars().all()
    assert sorted(sampled) == list(range(1, 11)) and sorted(r.check_id for r in records) == list(range(11, 21))
    # The due query: nothing is due right after a cycle (interval 300 s).
    assert worker.check_cycle(due_only=True) == ([], 0)


def test_a_hung_file_is_an_overrun_and_the_rest_of_the_cycle_goes_on(settings, make_image, monkeypatch):
    paths = [make_image(f"img{n}.rts.png") for n in range(3)]
    ids = [register_image(p, settings=settings)["image"]["id"] for p in paths]
    worker = Worker(load_settings())
    worker.check_cycle(due_only=False)
    release = threading.Event()
    real = worker_module.hash_entry

    def hangs_on_the_first(path: str):
        if path == str(paths[0]):
            release.wait(30)  # a hung mount would look the same
        return real(path)

    monkeypatch.setattr(worker_module, "hash_entry", hangs_on_the_first)
    worker.settings.health_check.timeout_s = 0.3
    try:
        records, overruns = worker.check_cycle(due_only=False)
        assert overruns == 1
        # The others were not hashed before hashing stopped: each got its own bounded check.
        assert sorted((r.image_id, r.status) for r in records) == [(ids[1], "healthy"), (ids[2], "healthy")]
        again, overruns = worker.check_cycle(due_only=False)  # still hung: recorded without a new attempt
        assert overruns == 1 and sorted(r.image_id for r in again) == ids[1:]
    finally:
        release.set()
    with session_scope(write=False) as session:
        hung = session.exec(sa.select(Check.status, Check.findings).where(Check.image_id == ids[0])
                            .order_by(Check.id)).all()
    assert [(s, f[0]["category"] if f else None) for s, f in hung] == [
        ("healthy", None), ("unknown", "performance"), ("unknown", "performance")]
    assert "did not finish within health_check.timeout_s (0.3 s)" in hung[1][1][0]["description"]
    assert "the previous check is still running" in hung[2][1][0]["description"]
    assert [a["kind"] for a in rows(Alert)] == ["image.check_timeout"]


def test_hash_entry_hashes_regular_files_and_refuses_everything_else(tmp_path):
    import hashlib

    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 4096)
    large = tmp_path / "large.bin"
    large.write_bytes(os.urandom((1 << 20) + 12345))  # over the os.read limit: streamed by file_digest
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    for path in (small, large, empty):
        st = path.stat()
        assert worker_module.hash_entry(str(path)) == (st.st_size, st.st_mtime_ns,
                                                       hashlib.sha256(path.read_bytes()).hexdigest())
    link = tmp_path / "link.bin"
    link.symlink_to(small)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # with no writer: opening it for reading without O_NONBLOCK would hang here
    unreadable = tmp_path / "unreadable.bin"
    unreadable.write_bytes(b"y")
    unreadable.chmod(0)
    expected_unreadable = None if os.geteuid() != 0 else (1, unreadable.stat().st_mtime_ns,
                                                         hashlib.sha256(b"y").hexdigest())
    assert [worker_module.hash_entry(str(p)) for p in (link, fifo, tmp_path, tmp_path / "missing", "/dev/null")] == [None] * 5
    assert worker_module.hash_entry(str(unreadable)) == expected_unreadable


def test_large_files_get_their_full_checks_in_threads_small_ones_in_order(settings, make_image, monkeypatch):
    """Changed images are checked in full: the large ones (LARGE_FILE_BYTES or more) in up to worker.threads - 1
    threads beside the small ones, which go one by one; every result is recorded, in the cycle's order."""
    names = [f"img{n}" for n in range(6)]
    paths = {}
    for n, name in enumerate(names):
        paths[name] = make_image(f"{name}.rts.png")
        if n % 2:  # the odd ones become large
            write_image(os.urandom(40_000 + n), paths[name])
    small = max(paths[n].stat().st_size for n in names[::2])
    assert small < 40_000 <= min(paths[n].stat().st_size for n in names[1::2])
    monkeypatch.setattr(worker_module, "LARGE_FILE_BYTES", small + 1)
    ids = {name: register_image(p, settings=settings)["image"]["id"] for name, p in paths.items()}
    worker = Worker(load_settings())
    started_by: dict[int, str] = {}
    real = worker._bounded_check

    def bounded(image_id):
        started_by[image_id] = threading.current_thread().name
        return real(image_id)

    monkeypatch.setattr(worker, "_bounded_check", bounded)
    records, overruns = worker.check_cycle(due_only=False)  # never checked: every image gets the full check
    assert overruns == 0
    assert [r.image_id for r in records] == [ids[n] for n in names]  # images_due's order (by path)
    assert {r.status for r in records} == {"healthy"}
    here = threading.current_thread().name
    assert {n: started_by[ids[n]] == here for n in names} == {n: int(n[-1]) % 2 == 0 for n in names}
    assert all(started_by[ids[n]].startswith("check-large") for n in names if int(n[-1]) % 2)


def test_a_damaged_stored_result_does_not_stop_the_cycle(settings, make_image, caplog):
    """The cycle reads the last checks' metrics and findings as JSON text; a row whose text is not JSON
    (SQLite stores any text; PostgreSQL's json type refuses it) or not the right kind is read as empty and
    logged, and every image is still recorded."""
    paths = [make_image(f"img{n}.rts.png") for n in range(3)]
    ids = [register_image(p, settings=settings)["image"]["id"] for p in paths]
    worker = Worker(load_settings())
    worker.check_cycle(due_only=False)
    engine = get_engine()
    sqlite = engine.dialect.name == "sqlite"
    table = Check.__table__
    with engine.begin() as conn:
        conn.execute(sa.update(table).where(table.c.image_id == ids[0]).values(status="warning"))
        if sqlite:
            conn.execute(sa.update(table).where(table.c.image_id == ids[0])
                         .values(metrics=sa.literal_column("'{not json'"), findings=sa.literal_column("'[1, '")))
        conn.execute(sa.update(table).where(table.c.image_id == ids[1]).values(metrics=[1, 2]))  # JSON, not an object
    caplog.set_level("WARNING", logger="healing.worker")
    records, overruns = worker.check_cycle(due_only=False)
    assert overruns == 0 and sorted(r.image_id for r in records) == ids
    got = {r.image_id: r for r in records}
    assert got[ids[0]].status == "warning" and got[ids[0]].reused
    if sqlite:
        assert (got[ids[0]].result["metrics"], got[ids[0]].result["findings"]) == ({}, [])
    assert got[ids[1]].result["metrics"] == {} and got[ids[2]].result["metrics"]
    assert sum("not valid JSON" in m for m in caplog.messages) == (2 if sqlite else 0)
