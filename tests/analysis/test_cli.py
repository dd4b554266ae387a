"""`selfheal check/baseline/analyze/vision` through a subprocess: exit codes and JSON shapes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np

from tests.analysis.conftest import random_bytes, rewrite_stream
from tests.conftest import selfheal_cmd, subprocess_env


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*selfheal_cmd(), *map(str, args)], capture_output=True, text=True, env=subprocess_env(),
                          cwd=cwd, timeout=120)


def test_check_exit_codes_and_json(make_rts, tmp_path) -> None:
    good = make_rts(random_bytes(20_000), name="good.rts.png")
    proc = run("check", good, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["status"] == "healthy" and data["metrics"]["hash_verified"] is True

    truncated = tmp_path / "trunc.rts.png"
    truncated.write_bytes(good.read_bytes()[:5000])
    crc = tmp_path / "crc.rts.png"
    raw = bytearray(good.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    crc.write_bytes(bytes(raw))
    for path in (truncated, crc):
        proc = run("check", path)
        assert proc.returncode == 2, (path, proc.stdout, proc.stderr)
        assert "CRITICAL" in proc.stdout and "Traceback" not in proc.stderr

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert run("check", tmp_path / "missing.png").returncode == 3
    assert run("check", text).returncode == 3
    # several images: the worst wins, and critical outranks unknown (as in `selfheal monitor`)
    assert run("check", good, text).returncode == 3
    assert run("check", text, truncated, good).returncode == 2

    out = tmp_path / "all.json"
    proc = run("check", good, truncated, "--json", "--output", out)
    assert proc.returncode == 2
    listed = json.loads(proc.stdout)
    assert [d["status"] for d in listed] == ["healthy", "critical"] and json.loads(out.read_text()) == listed


def test_baseline_then_check_names_the_block(make_rts, tmp_path) -> None:
    path = make_rts(random_bytes(50_000), name="k.rts.png")
    base = tmp_path / "k.json"
    assert run("baseline", path, "-o", base).returncode == 0
    document = json.loads(base.read_text())
    assert document["block_size"] == 4096 and len(document["block_sha256"]) == 16 and document["grid_size"] == 128
    rewrite_stream(path, lambda s: s.__setitem__(20_000, s[20_000] ^ 1))
    proc = run("check", path, "--baseline", base, "--json")
    assert proc.returncode == 2
    found = [f for f in json.loads(proc.stdout)["findings"] if f["source"] == "baseline"]
    assert [f["byte_range"] for f in found] == [[16384, 20480]]
    assert run("check", path, "--baseline", tmp_path / "none.json").returncode == 3


def test_warning_exit_for_a_changed_valid_image(make_rts, tmp_path) -> None:
    path = make_rts(random_bytes(30_000), name="w.rts.png")
    base = tmp_path / "w.json"
    assert run("baseline", path, "-o", base).returncode == 0
    make_rts(random_bytes(30_000, seed=4), name="w.rts.png")
    proc = run("check", path, "--baseline", base)
    assert proc.returncode == 1 and "security" in proc.stdout


def test_analyze_and_vision(make_rts, tmp_path) -> None:
    path = make_rts(random_bytes(100_000), name="a.rts.png")
    proc = run("analyze", path, "--method", "all", "--edge-method", "canny")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["edges"]["method"] == "canny" and data["entropy"]["blocks"] == 64
    assert set(data["clusters"]) == {"position", "color"} and "dominant_frequency" in data["fourier"]
    assert run("analyze", path, "--method", "shapes").returncode == 64

    out = tmp_path / "o"
    proc = run("vision", path, "--action", "entropy", "--output-dir", out, "--colormap", "inferno")
    assert proc.returncode == 0, proc.stderr
    heat = cv2.imread(str(out / "a_entropy.png"))
    assert heat.shape == (256, 256, 3) and np.unique(heat.reshape(-1, 3), axis=0).shape[0] > 1
    assert run("vision", path, "--action", "patterns", "--output-dir", out).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_clusters.png", "a_edges.png", "a_entropy.png", "a_fourier.png"]
    assert run("vision", path, "--action", "entropy", "--colormap", "nope").returncode == 64
