"""Fault injection for parity repair (issue 14): random damage patterns — bursts of many lengths,
scattered bytes, truncation, PNG header and IDAT damage, damage to the parity itself — on real PixelRTS
images from 4 KiB to 64 MiB.

For every pattern the expected verdict is computed independently of the repair code: the blocks that
really differ from the original (or are cut off), the parity shards whose bytes really changed, and
whether any codeword group lost more than r shares. The repair must then (a) return exactly the
original bytes when the damage is within capacity, (b) refuse otherwise, and (c) never return anything
else (a silent mis-repair). The repair rate by damage size is printed as a table (``pytest -s``).
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from healing.images import parity as P
from healing.pixelrts import write_image

KINDS = ("burst", "scattered", "truncation", "header", "idat", "parity")
BUCKETS = [(1, 64), (65, 1024), (1025, 4096), (4097, 16384), (16385, 65536), (65537, 262144), (262145, 1 << 20),
           ((1 << 20) + 1, 1 << 40)]


@dataclass
class Subject:
    """One image, its parity file and where its PNG header and IDAT data lie."""

    name: str
    data: bytes
    raw_parity: bytes
    parity: P.Parity
    header: tuple[int, int]  # signature + IHDR + the text chunks before the first IDAT
    idat: tuple[int, int]
    create_seconds: float


def png_regions(data: bytes) -> tuple[tuple[int, int], tuple[int, int]]:
    """[start, end) of everything before the first IDAT, and of the IDAT chunks."""
    pos, first_idat, last_idat = 8, None, None
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if kind == b"IDAT":
            first_idat = pos if first_idat is None else first_idat
            last_idat = end
        pos = end
        if kind == b"IEND":
            break
    assert first_idat is not None and last_idat is not None
    return (0, first_idat), (first_idat, last_idat)


def make_subject(tmp: Path, size: int, seed: int) -> Subject:
    path = tmp / f"s{size}.rts.png"
    payload = random.Random(seed).randbytes(max(1, size - 700))  # metadata and PNG framing make up the rest
    write_image(payload, path)
    data = path.read_bytes()
    start = time.perf_counter()
    raw = P.encode(data, 2)
    seconds = time.perf_counter() - start
    header, idat = png_regions(data)
    return Subject(f"{len(data) // 1024} KiB", data, raw, P.parse(raw), header, idat, seconds)


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return max(low, min(high, int(math.exp(rng.uniform(math.log(low), math.log(high + 1))))))


def _corrupt(raw: bytearray, start: int, length: int, rng: random.Random) -> None:
    """Overwrite ``length`` bytes at ``start``: zeros, random bytes or inverted bits (bit rot, a zeroed
    range, garbage from a bad write)."""
    end = min(len(raw), start + length)
    how = rng.randrange(3)
    if how == 0:
        raw[start:end] = bytes(end - start)
    elif how == 1:
        raw[start:end] = rng.randbytes(end - start)
    else:
        for i in range(start, end):
            raw[i] ^= 1 << rng.randrange(8)


def damage(subject: Subject, kind: str, rng: random.Random) -> tuple[bytes, bytes]:
    """A damaged copy of the image and of its parity file for one pattern of ``kind``."""
    data, raw_parity = bytearray(subject.data), bytearray(subject.raw_parity)
    n = len(data)
    burst = subject.parity.layout.recoverable_burst_bytes
    if kind == "burst":
        length = _log_uniform(rng, 1, min(n, 3 * burst))
        _corrupt(data, rng.randrange(0, n - length + 1), length, rng)
    elif kind == "scattered":
        count = _log_uniform(rng, 1, 4 * subject.parity.layout.capacity()["scattered_blocks_max"])
        for _ in range(count):
            data[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif kind == "truncation":
        del data[n - _log_uniform(rng, 1, min(n, 3 * burst)):]
    elif kind in ("header", "idat"):
        lo, hi = subject.header if kind == "header" else subject.idat
        length = _log_uniform(rng, 1, min(hi - lo, 3 * burst))
        _corrupt(data, rng.randrange(lo, hi - length + 1), length, rng)
    else:  # the parity itself: shards, one header copy, both copies; sometimes with file damage as well
        where = rng.randrange(4)
        m = len(raw_parity)
        if where == 0:
            length = _log_uniform(rng, 1, m // 2)
            _corrupt(raw_parity, rng.randrange(0, m - length + 1), length, rng)
        elif where == 1:
            _corrupt(raw_parity, rng.randrange(0, 64), rng.randint(1, 32), rng)
        elif where == 2:
            _corrupt(raw_parity, m - rng.randint(33, 96), rng.randint(1, 32), rng)
        else:
            _corrupt(raw_parity, rng.randrange(0, 64), rng.randint(1, 32), rng)
            _corrupt(raw_parity, m - rng.randint(33, 96), rng.randint(1, 32), rng)
        if rng.random() < 0.7:
            length = _log_uniform(rng, 1, min(n, burst))
            _corrupt(data, rng.randrange(0, n - length + 1), length, rng)
    return bytes(data), bytes(raw_parity)


def expected_verdict(subject: Subject, data: bytes, raw_parity: bytes) -> tuple[bool, int]:
    """(repairable?, damaged bytes) judged from the original bytes, not from the parity's hashes."""
    original, layout = subject.data, subject.parity.layout
    size, common = layout.block_size, min(len(original), len(data))
    differs = np.frombuffer(original, np.uint8)[:common] != np.frombuffer(data, np.uint8)[:common]
    damaged_bytes = int(np.count_nonzero(differs)) + len(original) - common
    per_block = np.zeros(layout.n_blocks * size, bool)
    per_block[:common] = differs
    per_block[common:len(original)] = True  # cut off
    lost: dict[int, int] = defaultdict(int)
    for i in np.flatnonzero(per_block.reshape(layout.n_blocks, size).any(axis=1)):
        lost[int(i) % layout.groups] += 1
    try:
        damaged_parity = P.parse(raw_parity)
    except P.ParityError:
        return False, damaged_bytes
    if data == original:
        return True, 0  # nothing to rebuild: an intact file comes back as it is
    clean = subject.raw_parity
    base_a = len(P.MAGIC) + 4
    header_len = struct.unpack(">I", clean[len(P.MAGIC):base_a])[0]
    base = base_a + header_len + 32
    for s in range(layout.n_shards):
        at = base + layout.shard_position(s) * size
        if raw_parity[at:at + size] != clean[at:at + size]:
            lost[s // layout.r] += 1
    assert damaged_parity.layout == layout
    return all(count <= layout.r for count in lost.values()), damaged_bytes


def run_patterns(subjects: list[tuple[Subject, int]], seed: int) -> dict[str, object]:
    """Run ``count`` random patterns on each subject; returns the tallies (and asserts each verdict)."""
    rng = random.Random(seed)
    by_bucket: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    mis_repairs, total, repair_bytes, repair_seconds = 0, 0, 0, 0.0
    for subject, count in subjects:
        for _ in range(count):
            kind = KINDS[rng.randrange(len(KINDS))]
            data, raw_parity = damage(subject, kind, rng)
            within, damaged_bytes = expected_verdict(subject, data, raw_parity)
            start = time.perf_counter()
            try:
                repaired: bytes | None = P.repair(data, P.parse(raw_parity))
            except (P.RepairRefused, P.ParityError):
                repaired = None
            if repaired is not None and damaged_bytes:
                repair_seconds += time.perf_counter() - start
                repair_bytes += len(subject.data)
            if repaired is not None and repaired != subject.data:
                mis_repairs += 1
            assert (repaired is not None) == within, (subject.name, kind, damaged_bytes)
            total += 1
            bucket = next(b for b in BUCKETS if b[0] <= max(1, damaged_bytes) <= b[1])
            by_bucket[bucket][0] += 1
            by_bucket[bucket][1] += repaired is not None
            by_kind[kind][0] += 1
            by_kind[kind][1] += repaired is not None
    return {"total": total, "mis_repairs": mis_repairs, "by_bucket": dict(by_bucket), "by_kind": dict(by_kind),
            "repair_mib_s": (repair_bytes / 2**20 / repair_seconds) if repair_seconds else None}


def table(result: dict[str, object]) -> str:
    lines = ["damaged bytes          patterns  repaired  rate"]
    for (lo, hi), (n, ok) in sorted(result["by_bucket"].items()):  # type: ignore[union-attr]
        label = f"{lo}–{hi}" if hi < 1 << 40 else f"> {lo - 1}"
        lines.append(f"{label:<22} {n:>8}  {ok:>8}  {100 * ok / n:5.1f} %")
    lines.append("kind                   patterns  repaired  rate")
    for kind, (n, ok) in sorted(result["by_kind"].items()):  # type: ignore[union-attr]
        lines.append(f"{kind:<22} {n:>8}  {ok:>8}  {100 * ok / n:5.1f} %")
    return "\n".join(lines)


def test_png_regions_of_a_real_image(tmp_path):
    subject = make_subject(tmp_path, 20_000, 1)
    (h0, h1), (i0, i1) = subject.header, subject.idat
    assert (h0, h1 == i0, subject.data[i0 + 4:i0 + 8], subject.data[i1:i1 + 8][4:]) == (0, True, b"IDAT", b"IEND")


def test_quick_fault_injection(tmp_path):
    """120 patterns on 4 KiB … 256 KiB images: every verdict as predicted, no silent mis-repair."""
    subjects = [(make_subject(tmp_path, size, seed), 30) for seed, size in enumerate((4096, 16384, 65536, 262144))]
    result = run_patterns(subjects, seed=11)
    print("\n" + table(result))
    assert (result["total"], result["mis_repairs"]) == (120, 0)
    assert sum(ok for _n, ok in result["by_kind"].values()) > 0  # type: ignore[union-attr]


@pytest.mark.slow
def test_thousand_patterns_4kib_to_64mib(tmp_path):
    """1,000 patterns on eight images from 4 KiB to 64 MiB; prints the rate-vs-size table and the
    creation and repair throughput."""
    plan = [(4096, 100), (16384, 120), (65536, 130), (262144, 150), (1 << 20, 170), (4 << 20, 150), (16 << 20, 110),
            (64 << 20, 70)]
    subjects = [(make_subject(tmp_path, size, seed), count) for seed, (size, count) in enumerate(plan)]
    result = run_patterns(subjects, seed=2026)
    big = subjects[-1][0]
    create_mib_s = len(big.data) / 2**20 / big.create_seconds
    print(f"\n{result['total']} patterns, {result['mis_repairs']} silent mis-repairs; parity creation "
          f"{create_mib_s:.0f} MiB/s (64 MiB image), repair {result['repair_mib_s']:.0f} MiB/s (file bytes per second "
          "of diagnose + rebuild + verify, all sizes)\n" + table(result))
    assert (result["total"], result["mis_repairs"]) == (1000, 0)
    assert hashlib.sha256(big.data).hexdigest() == big.parity.file_sha256
