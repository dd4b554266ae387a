"""Parity benchmark (issue 14): our zfec parity against Debian's `par2` at the same redundancy (2 %) and
the same block size, on one real PixelRTS image, the same damage given to both: which patterns each
repairs, and how long creation and repair take.

par2 runs single-threaded (-t1), like our encoder, so the times compare one core with one core.
SELFHEAL_BENCH_QUICK=1 uses a 4 MiB image instead of 16 MiB. Without `par2` on PATH its half is
skipped with a message.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from healing.images import parity as P  # noqa: E402
from healing.pixelrts import write_image  # noqa: E402

PERCENT = 2


def patterns(size: int, burst: int, block: int) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """(label, damage list); damage = ("file"|"parity", start, length) zeroed bytes, or ("cut", 0, n)."""
    mid = size // 3
    rng = random.Random(14)
    out: list[tuple[str, list[tuple[str, int, int]]]] = [
        ("burst 1 byte", [("file", mid, 1)]),
        ("burst 4 KiB", [("file", mid, 4096)]),
        ("burst 64 KiB", [("file", mid, 65536)]),
    ]
    for share in (0.5, 0.9, 1.1, 2.0):
        out.append((f"burst {share:.0%} of ours ({int(burst * share)} B)", [("file", mid, int(burst * share))]))
    for count in (3, 5, 20, 100, 400):
        out.append((f"{count} scattered bytes", [("file", rng.randrange(size), 1) for _ in range(count)]))
    out.append(("truncate 10 KiB", [("cut", 0, 10240)]))
    out.append((f"truncate 90% of burst ({int(burst * 0.9)} B)", [("cut", 0, int(burst * 0.9))]))
    out.append(("PNG header zeroed (100 B)", [("file", 0, 100)]))
    out.append(("parity 10% damaged + 4 KiB burst", [("parity", 0, 0), ("file", mid, 4096)]))
    return out


def apply(data: bytes, damage: list[tuple[str, int, int]]) -> bytes:
    raw = bytearray(data)
    for where, start, length in damage:
        if where == "file":
            raw[start:start + length] = bytes(len(raw[start:start + length]))
        elif where == "cut":
            del raw[len(raw) - length:]
    return bytes(raw)


def damage_parity_file(path: Path) -> None:
    """Zero 10 % of a parity (or par2 recovery) file in its middle, where the recovery data lies."""
    raw = bytearray(path.read_bytes())
    start, length = len(raw) // 2 - len(raw) // 20, len(raw) // 10
    raw[start:start + length] = bytes(length)
    path.chmod(0o600)
    path.write_bytes(bytes(raw))


def ours(data: bytes, raw_parity: bytes, original: bytes, damage: list[tuple[str, int, int]], tmp: Path) -> tuple[str, float]:
    if any(d[0] == "parity" for d in damage):
        target = tmp / "ours.parity"
        target.write_bytes(raw_parity)
        damage_parity_file(target)
        raw_parity = target.read_bytes()
    start = time.perf_counter()
    try:
        repaired = P.repair(data, P.parse(raw_parity))
    except (P.RepairRefused, P.ParityError):
        return "refused", time.perf_counter() - start
    seconds = time.perf_counter() - start
    return ("repaired" if repaired == original else "MIS-REPAIRED"), seconds


def par2(original_path: Path, data: bytes, original: bytes, damage: list[tuple[str, int, int]], tmp: Path,
         block: int) -> tuple[str, float]:
    work = tmp / "par2"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for f in original_path.parent.glob("base*.par2"):
        shutil.copy(f, work / f.name)
    (work / original_path.name).write_bytes(data)
    if any(d[0] == "parity" for d in damage):
        for vol in work.glob("base.vol*.par2"):
            damage_parity_file(vol)
    start = time.perf_counter()
    out = subprocess.run(["par2", "repair", "-q", "-t1", "base.par2"], cwd=work, capture_output=True, timeout=600)
    seconds = time.perf_counter() - start
    repaired = (work / original_path.name).read_bytes() == original
    if out.returncode == 0 and repaired:
        return "repaired", seconds
    return ("MIS-REPAIRED" if out.returncode == 0 else "failed"), seconds


def main() -> list[tuple[str, float, float | None]]:
    quick = os.environ.get("SELFHEAL_BENCH_QUICK") == "1"
    payload = (4 if quick else 16) << 20
    print(f"== parity: zfec (ours) vs par2, {PERCENT} % redundancy, {payload >> 20} MiB image"
          + (" (SELFHEAL_BENCH_QUICK=1)" if quick else "") + " ==")
    with tempfile.TemporaryDirectory(prefix="bench-parity-") as name:
        tmp = Path(name)
        image = tmp / "src" / "image.rts.png"
        image.parent.mkdir()
        write_image(random.Random(1).randbytes(payload), image)
        original = image.read_bytes()
        mib = len(original) / 2**20
        start = time.perf_counter()
        raw_parity = P.encode(original, PERCENT)
        create_ours = time.perf_counter() - start
        layout = P.parse(raw_parity).layout
        cap = layout.capacity()
        print(f"ours: blocks of {layout.block_size} B, k={layout.k} r={layout.r} groups={layout.groups}; parity file "
              f"{len(raw_parity)} B ({100 * len(raw_parity) / len(original):.2f} % incl. hashes); burst "
              f"{cap['recoverable_burst_bytes']} B, any {cap['scattered_blocks_guaranteed']} blocks, up to "
              f"{cap['scattered_blocks_max']} spread; create {create_ours * 1000:.0f} ms ({mib / create_ours:.0f} MiB/s)")
        have_par2 = shutil.which("par2") is not None
        create_par2 = None
        if have_par2:
            start = time.perf_counter()
            subprocess.run(["par2", "create", "-q", "-t1", f"-r{PERCENT}", "-n1", f"-s{layout.block_size}", "base.par2",
                            image.name], cwd=image.parent, check=True, capture_output=True, timeout=600)
            create_par2 = time.perf_counter() - start
            size = sum(f.stat().st_size for f in image.parent.glob("base*.par2"))
            print(f"par2: -r{PERCENT} -s{layout.block_size} -t1: recovery files {size} B "
                  f"({100 * size / len(original):.2f} %); create {create_par2 * 1000:.0f} ms ({mib / create_par2:.1f} MiB/s)")
        else:
            print("par2: not installed (apt-get install par2); its half of the comparison is skipped")
        print(f"{'damage':<40} {'ours':>10} {'ms':>8}  {'par2':>10} {'ms':>8}")
        mis = 0
        wins = {"ours": 0, "par2": 0}
        repair_times = []
        for label, damage in patterns(len(original), layout.recoverable_burst_bytes, layout.block_size):
            data = apply(original, damage)
            verdict, seconds = ours(data, raw_parity, original, damage, tmp)
            mis += verdict == "MIS-REPAIRED"
            wins["ours"] += verdict == "repaired"
            if verdict == "repaired":
                repair_times.append(seconds)
            row = f"{label:<40} {verdict:>10} {seconds * 1000:8.1f}"
            if have_par2:
                pv, ps = par2(image, data, original, damage, tmp, layout.block_size)
                mis += pv == "MIS-REPAIRED"
                wins["par2"] += pv == "repaired"
                row += f"  {pv:>10} {ps * 1000:8.1f}"
            print(row)
        print(f"repaired: ours {wins['ours']}, par2 {wins['par2'] if have_par2 else 'n/a'} of "
              f"{len(patterns(len(original), 1, 1))} patterns")
    summary: list[tuple[str, float, float | None]] = [
        ("parity silent mis-repairs", float(mis), 0.0),
        ("parity create MiB/s (ours)", mib / create_ours, None),
    ]
    if repair_times:
        summary.append(("parity repair MiB/s (ours, median)", mib / sorted(repair_times)[len(repair_times) // 2], None))
    if create_par2:
        summary.append(("parity create time par2 / ours", create_par2 / create_ours, None))
    return summary


if __name__ == "__main__":
    for metric, value, _target in main():
        print(f"{metric:<40} {value:10.3f}")
