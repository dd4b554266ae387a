"""`selfheal register PATH...`: directories, globs, --from-file (and stdin), duplicates, failures among good
files, --json, and the exit code (the worst: damaged 2 over unreadable 3, as for monitor)."""

from __future__ import annotations

import io
import os
import json
import subprocess
import sys
from pathlib import Path

import pytest

from healing.cli import main
from storage import queries
from storage.engine import session_scope
from tests.conftest import selfheal_cmd, subprocess_env
from tests.images.test_registry_service import hash_mismatch


def registered() -> list[str]:
    with session_scope(write=False) as session:
        return [row["path"] for row in queries.list_images_with_latest_status(session)]


def audit_kinds(kind: str) -> list[str]:
    with session_scope(write=False) as session:
        return [e["subject"] for e in queries.audit_page(session, kind=kind, limit=1000)]


@pytest.fixture()
def folder(make_image, tmp_path: Path) -> Path:
    for name in ("a.rts.png", "b.rts.png", "c.png"):
        make_image(name)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    sub = tmp_path / "imgs" / "sub"
    sub.mkdir()
    make_image("sub-d.rts.png").rename(sub / "d.rts.png")
    return tmp_path / "imgs"


def test_a_directory_registers_its_png_files_and_recursive_goes_below(settings, folder, capsys):
    assert main(["register", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == [f"registered {folder / n}" for n in ("a.rts.png", "b.rts.png", "c.png")]
    assert lines[3:] == ["3 of 3 images registered, 0 failed (exit 0)"]
    assert registered() == [str(folder / n) for n in ("a.rts.png", "b.rts.png", "c.png")]
    assert main(["register", str(folder), "--recursive", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(Path(r["path"]).relative_to(folder).as_posix(), r["changed"], r["interval_s"]) for r in rows] == [
        ("a.rts.png", False, 300), ("b.rts.png", False, 300), ("c.png", False, 300), ("sub/d.rts.png", False, 300)]
    assert len(registered()) == 4 and len(set(audit_kinds("image.registered"))) == 4


def test_one_bad_file_among_good_ones(settings, folder, capsys, tmp_path):
    (folder / "broken.png").write_bytes(b"this is not a png")
    assert main(["register", str(folder), "--interval", "60"]) == 3
    out, err = capsys.readouterr()
    assert err == f"selfheal: {folder / 'broken.png'}: not a PNG image (bad signature)\n"
    assert out.splitlines()[-1] == "3 of 4 images registered, 1 failed (exit 3)"
    assert len(registered()) == 3
    # A damaged image outranks an unreadable one (2 before 3, as for monitor); the refusal is audited.
    hash_mismatch(folder / "a.rts.png")
    missing = tmp_path / "nowhere.rts.png"
    assert main(["register", str(folder / "a.rts.png"), str(missing), str(folder / "b.rts.png"), "--json"]) == 2
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert [(Path(r["path"]).name, r.get("exit_code")) for r in result] == [
        ("nowhere.rts.png", 3), ("a.rts.png", 2), ("b.rts.png", None)]
    assert result[0]["error"] == f"{missing}: no such file"
    assert result[1]["error"].startswith(f"{folder / 'a.rts.png'}: refusing to register a damaged image")
    assert err.count("\n") == 2 and "Traceback" not in err
    assert audit_kinds("image.register_refused") == [str(folder / "a.rts.png")]


def test_from_file_stdin_globs_and_duplicates(settings, folder, capsys, monkeypatch, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# images to watch\n{folder / 'b.rts.png'}\n\n  {folder / 'a.rts.png'}  \n{folder / 'b.rts.png'}\n")
    assert main(["register", "--from-file", str(listing), str(folder / "a.rts.png")]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == [  # arguments, then the file's lines
        f"registered {folder / 'a.rts.png'}", f"registered {folder / 'b.rts.png'}", "2 of 2 images registered, 0 failed (exit 0)"]
    assert registered() == [str(folder / "a.rts.png"), str(folder / "b.rts.png")]
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{folder / 'c.png'}\n"))
    assert main(["register", "--from-file", "-", "--json"]) == 0
    assert [r["path"] for r in json.loads(capsys.readouterr().out)] == [str(folder / "c.png")]
    assert main(["register", str(folder / "sub" / "*.rts.png"), str(folder / "*.nothing")]) == 3
    out, err = capsys.readouterr()
    assert err == f"selfheal: {folder / '*.nothing'}: no file matches this pattern\n"
    assert out.splitlines()[-1] == "1 of 2 images registered, 1 failed (exit 3)"
    assert registered()[-1] == str(folder / "sub" / "d.rts.png")
    assert main(["register", "--from-file", str(tmp_path / "absent.txt")]) == 3
    assert capsys.readouterr().err.startswith(f"selfheal: {tmp_path / 'absent.txt'}: cannot read the list of paths")


def test_duplicates_register_once(settings, folder, capsys):
    a, b = str(folder / "a.rts.png"), str(folder / "b.rts.png")
    assert main(["register", b, a, b, str(folder / "sub" / ".." / "b.rts.png"), "--json"]) == 0
    assert [r["path"] for r in json.loads(capsys.readouterr().out)] == [b, a]
    assert sorted(audit_kinds("image.registered")) == [a, b]


def test_stdin_through_the_real_command_and_usage(_isolated_home, make_image, tmp_path):
    paths = [make_image(f"{n}.rts.png") for n in "xy"]
    env = subprocess_env(SELFHEAL_HOME=str(_isolated_home))
    out = subprocess.run([*selfheal_cmd(), "register", "--from-file", "-"], input="\n".join(map(str, paths)) + "\n",
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [line for line in out.stderr.splitlines() if not line.startswith("created audit key ")] == []
    assert out.stdout.splitlines()[-1] == "2 of 2 images registered, 0 failed (exit 0)"
    out = subprocess.run([*selfheal_cmd(), "register"], env=env, capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stderr) == (64, "selfheal register: error: give at least one IMAGE or --from-file\n")


LAZY = """
import sys
from healing.cli import main
code = main(["validate", sys.argv[1]])
print(code, sorted(m for m in sys.modules if m.endswith("commands")))
"""


def test_a_command_imports_only_the_modules_up_to_its_own(make_image, tmp_path):
    image = make_image()
    out = subprocess.run([sys.executable, "-c", LAZY, str(image)], env=subprocess_env(SELFHEAL_HOME=str(tmp_path / "h")),
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines()[-1] == "0 ['healing.pixelrts.commands']", out.stderr
    usage = subprocess.run([*selfheal_cmd(), "--help"], env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0 and all(f"\n    {name} " in usage.stdout for name in ("validate", "register", "worker", "demo"))


def test_the_batch_insert_writes_what_registering_one_by_one_writes(settings, make_image, tmp_path, monkeypatch):
    """register_many records new paths with one multi-row INSERT and one append_events (storage.queries.
    insert_images); rows and audit payloads must equal register_image's, also for a chunk that mixes new
    paths, a re-registration (per image: change accepted) and a refusal, and the chain must verify."""
    import sqlalchemy as sa

    from healing.images import registry
    from healing.images.registry import register_image, register_many
    from healing.pixelrts import write_image
    from storage.audit import verify_chain
    from storage.models import AuditEvent, Image

    monkeypatch.setattr(registry, "REGISTER_BATCH", 3)
    one = [make_image(f"one{n}.rts.png") for n in range(3)]
    many = [make_image(f"many{n}.rts.png") for n in range(5)]
    for path in one:
        register_image(path, settings=settings, interval_s=120)
    again = one[0]
    write_image(b"accepted new content " * 50, again)
    broken = make_image("broken.rts.png")
    hash_mismatch(broken)
    results = dict(register_many([*many[:2], again, broken, *many[2:]], settings=settings, interval_s=120))
    assert isinstance(results[str(broken)], registry.CorruptedError)
    assert results[str(again)]["changed"] is True and results[str(many[0])]["changed"] is False

    def normalised(path: Path) -> tuple:
        with session_scope(write=False) as session:
            row = session.execute(sa.select(Image).where(Image.path == str(path))).scalar_one().model_dump()
            events = session.execute(sa.select(AuditEvent.kind, AuditEvent.actor, AuditEvent.payload)
                                     .where(AuditEvent.subject == str(path)).order_by(AuditEvent.seq)).all()
        row = {k: v for k, v in row.items() if k not in ("id", "path", "name", "registered_at", "updated_at",
                                                         "golden_sha256", "golden_path", "baseline_path", "baseline")}
        payloads = []
        for kind, actor, payload in events:
            data = json.loads(payload)
            for key in ("image_id", "name", "golden_sha256", "golden_path", "baseline_path"):
                data.pop(key, None)
            payloads.append((kind, actor, data))
        return row, payloads

    assert normalised(many[0]) == normalised(one[1]) == normalised(many[4])
    assert normalised(many[0])[1] == [("image.registered", "cli", {"baseline": "updated", "critical": False,
                                                                    "interval_s": 120})]
    for path in many:  # what the caller got is the stored row
        with session_scope(write=False) as session:
            assert results[str(path)]["image"] == queries.get_image(session, path=str(path))
    with session_scope(write=False) as session:
        assert [e["kind"] for e in queries.audit_page(session, subject=str(again), limit=10)][:1] == ["image.change_accepted"]
        assert verify_chain(session).ok


def test_directory_fsyncs_are_batched_and_done_before_each_chunk_commits(settings, make_image, monkeypatch):
    import sqlalchemy as sa

    from healing import safeio
    from healing.images import registry
    from healing.images.registry import register_many
    from storage.engine import get_engine

    monkeypatch.setattr(registry, "REGISTER_BATCH", 2)
    paths = [make_image(f"img{n}.rts.png") for n in range(5)]
    log: list[tuple[str, str]] = []
    monkeypatch.setattr(safeio, "_fsync_directory_now", lambda d: log.append(("sync", os.fspath(d))))
    engine = get_engine()

    def committed(_conn: object) -> None:
        log.append(("commit", ""))

    sa.event.listen(engine, "commit", committed)
    try:
        results = [outcome for _path, outcome in register_many(paths, settings=settings)]
    finally:
        sa.event.remove(engine, "commit", committed)
    commits = [n for n, (what, _) in enumerate(log) if what == "commit"]
    assert len(commits) == 3  # chunks of 2, 2, 1
    for number, outcome in enumerate(results):
        wanted = {str(Path(outcome["image"]["golden_path"]).parent), str(Path(outcome["baseline_path"]).parent)}
        synced = {d for what, d in log[:commits[number // 2]] if what == "sync"}
        assert wanted <= synced, (number, wanted - synced)
    syncs = [d for what, d in log if what == "sync"]
    first = [d for what, d in log[:commits[0]] if what == "sync"]
    # Each directory once per flush, not once per file (4 atomic writes per image here).
    assert len(syncs) < 4 * len(paths) and len(first) == len(set(first))
