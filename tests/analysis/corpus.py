"""A corpus of real files of this machine, encoded as PixelRTS images and stripped to plain PNGs.

Used to calibrate and measure the statistics that decide when no hash can (healing.analysis.ranges):
tests/analysis/test_calibration.py runs a small deterministic subset, bench/bench_calibration.py the
whole corpus. Categories: ``executable`` (ELF files of /usr/bin), ``library`` (ELF .so files of
/usr/lib/x86_64-linux-gnu), ``compressed`` (.gz files under /usr/share, .jar/.zip archives, and xz /
gzip archives of real libraries and documents made here with the standard library), ``text``
(/usr/share/doc files, and documents concatenated to larger sizes), ``wasm`` (any .wasm file found
in the virtual environment and modules assembled here by ``build_wasm``), ``sparse`` (real content
cut into 4 KiB-aligned extents separated by holes of zeros, as a disk image or database file has).

Selection is deterministic on one machine: candidates are ordered by the sha256 of a seed and their
path. Each sample is assigned to the ``calibration`` or ``held-out`` half by the parity of its name's
hash. Damaged variants replace a ``DAMAGE_BYTES`` range at a seeded offset with zeros or noise.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import hashlib
import lzma
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CATEGORIES = ("executable", "library", "compressed", "text", "wasm", "sparse")
DAMAGE_BYTES = 64 << 10
MIN_SIZE = 4 << 10
MAX_SIZE = 16 << 20
DAMAGE_MIN_SIZE = 1 << 20  # damaged variants are made of the samples of 1–16 MiB
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Sample:
    """One clean corpus file: ``load()`` returns its bytes (read or built on demand)."""

    name: str
    category: str
    size: int
    load: Callable[[], bytes]

    @property
    def half(self) -> str:
        """``calibration`` or ``held-out`` (parity of the name's sha256)."""
        return "calibration" if hashlib.sha256(self.name.encode()).digest()[0] % 2 == 0 else "held-out"


@dataclass(frozen=True)
class Damaged:
    """A damaged variant: ``kind`` zeros or noise over [start, start + DAMAGE_BYTES) of ``sample``."""

    sample: Sample
    kind: str
    start: int

    @property
    def end(self) -> int:
        return self.start + DAMAGE_BYTES

    @property
    def name(self) -> str:
        return f"{self.sample.name}+{self.kind}@{self.start}"

    def load(self) -> bytes:
        data = bytearray(self.sample.load())
        if self.kind == "zeros":
            data[self.start : self.end] = bytes(DAMAGE_BYTES)
        else:
            data[self.start : self.end] = _seeded(self.name).integers(0, 256, DAMAGE_BYTES, dtype=np.uint8).tobytes()
        return bytes(data)


def _seeded(text: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))


def _order(paths: list[str], seed: str) -> list[str]:
    return sorted(paths, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())


def _regular(path: str, low: int = MIN_SIZE, high: int = MAX_SIZE) -> bool:
    try:
        return os.path.isfile(path) and not os.path.islink(path) and low <= os.path.getsize(path) <= high
    except OSError:
        return False


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _reader(path: str) -> Callable[[], bytes]:
    return lambda: Path(path).read_bytes()


def _pick(paths: list[str], count: int, big: int, seed: str, max_size: int) -> list[str]:
    """``count`` paths, ``big`` of them of at least DAMAGE_MIN_SIZE (as far as there are), no duplicates by content size."""
    ordered = _order([p for p in paths if os.path.getsize(p) <= max_size], seed)
    large = [p for p in ordered if os.path.getsize(p) >= DAMAGE_MIN_SIZE]
    chosen, sizes = [], set()
    for p in large[: big * 3]:
        if len(chosen) < big and os.path.getsize(p) not in sizes:
            chosen.append(p)
            sizes.add(os.path.getsize(p))
    for p in ordered:
        if len(chosen) >= count:
            break
        if p not in chosen and os.path.getsize(p) not in sizes:
            chosen.append(p)
            sizes.add(os.path.getsize(p))
    return chosen


def _files(category: str, count: int, big: int, max_size: int) -> list[Sample]:
    if category == "executable":
        paths = [p for p in glob.glob("/usr/bin/*") if _regular(p) and _is_elf(p)]
    else:
        paths = [p for p in glob.glob("/usr/lib/x86_64-linux-gnu/*.so*") if _regular(p) and _is_elf(p)]
    return [Sample(f"{category}/{os.path.basename(p)}", category, os.path.getsize(p), _reader(p))
            for p in _pick(paths, count, big, category, max_size)]


def _documents(limit: int) -> bytes:
    """Real text: /usr/share/doc files that are not compressed, then Python sources, up to ``limit`` bytes."""
    out, total = [], 0
    candidates = sorted(glob.glob("/usr/share/doc/*/*")) + sorted(glob.glob("/usr/lib/python3*/**/*.py", recursive=True))
    for p in candidates:
        if total >= limit:
            break
        if _regular(p, 1, MAX_SIZE) and not p.endswith((".gz", ".xz", ".bz2", ".zip")):
            data = Path(p).read_bytes()
            if b"\0" not in data[:4096]:
                out.append(data)
                total += len(data)
    return b"".join(out)[:limit]


def _text(count: int, big: int, max_size: int) -> list[Sample]:
    paths = [p for p in glob.glob("/usr/share/doc/*/*") if _regular(p) and not p.endswith((".gz", ".xz", ".bz2", ".zip"))
             and b"\0" not in Path(p).read_bytes()[:4096]]
    samples = [Sample(f"text/{Path(p).parent.name}-{Path(p).name}", "text", os.path.getsize(p), _reader(p))
               for p in _pick(paths, count - big, 0, "text", max_size)]
    for i in range(big):
        size = (1 << 20) + i * ((min(8 << 20, max_size) - (1 << 20)) // max(1, big))
        samples.append(Sample(f"text/documents-{size}", "text", size, lambda size=size: _documents(size)))
    return samples


def _compressed(count: int, big: int, max_size: int) -> list[Sample]:
    gz = [str(p) for p in Path("/usr/share").rglob("*.gz") if _regular(str(p), 16 << 10)]
    archives = [p for pattern in ("/usr/share/java/*.jar", "/usr/lib/jvm/*/lib/*.zip", "/usr/share/maven-repo/**/*.jar")
                for p in glob.glob(pattern, recursive=True) if _regular(p, 16 << 10)]
    made = big // 2
    real = (_pick(gz, (count - big) // 2 + 1, 0, "gz", max_size)
            + _pick(archives, count - made - ((count - big) // 2 + 1), big - made, "zip", max_size))
    samples = [Sample(f"compressed/{os.path.basename(p)}", "compressed", os.path.getsize(p), _reader(p)) for p in real]
    libraries = _order([p for p in glob.glob("/usr/lib/x86_64-linux-gnu/*.so*")
                        if _regular(p, min(3 << 20, max_size), min(12 << 20, 3 * max_size)) and _is_elf(p)], "archive")
    for i, lib in enumerate(libraries[:made]):
        if i % 2 == 0:
            samples.append(Sample(f"compressed/{os.path.basename(lib)}.xz", "compressed", 0,
                                  lambda lib=lib: lzma.compress(Path(lib).read_bytes(), preset=1)))
        else:
            samples.append(Sample(f"compressed/{os.path.basename(lib)}.gz", "compressed", 0,
                                  lambda lib=lib: gzip.compress(Path(lib).read_bytes(), 6, mtime=0)))
    text_size = min(6 << 20, 3 * max_size)
    samples.append(Sample("compressed/documents.bz2", "compressed", 0, lambda: bz2.compress(_documents(text_size), 9)))
    return samples


# ---------------------------------------------------------------------------------------- WASM


def _leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _section(sid: int, body: bytes) -> bytes:
    return bytes([sid]) + _leb(len(body)) + body


def _instruction_table(rng: np.random.Generator) -> tuple[list[bytes], np.ndarray]:
    """Encoded instructions with their operands, and how often a compiler emits each (weights)."""
    table: list[bytes] = []
    weights: list[float] = []

    def add(encodings: list[bytes], share: float) -> None:
        table.extend(encodings)
        weights.extend([share / len(encodings)] * len(encodings))

    add([b"\x20" + _leb(i) for i in range(12)], 0.30)  # local.get
    add([b"\x21" + _leb(i) for i in range(12)], 0.12)  # local.set
    add([b"\x41" + _leb(int(v)) for v in [0, 1, 2, 4, 8, 16, 255, *rng.integers(0, 1 << 16, 200)]], 0.15)  # i32.const
    add([bytes([op]) for op in (0x6A, 0x6B, 0x6C, 0x71, 0x72, 0x74, 0x46, 0x47, 0x48)], 0.13)  # arithmetic
    add([bytes([op]) + _leb(2) + _leb(4 * k) for op in (0x28, 0x36, 0x2D) for k in range(64)], 0.12)  # loads/stores
    add([b"\x10" + _leb(i) for i in range(200)], 0.10)  # call
    add([b"\x0d" + _leb(i) for i in range(3)], 0.08)  # br_if
    return table, np.asarray(weights) / sum(weights)


def build_wasm(size: int, seed: int) -> bytes:
    """A WebAssembly module of about ``size`` bytes assembled here: types, functions whose bodies are a
    compiler-like mix of locals, constants, arithmetic, loads/stores, calls and branches, and a data
    section of real text (as a C program's string literals)."""
    rng = np.random.default_rng(seed)
    types = _leb(4) + b"".join(b"\x60" + _leb(p) + b"\x7f" * p + b"\x01\x7f" for p in (0, 1, 2, 3))
    data_text = _documents(max(1024, size // 5))
    table, weights = _instruction_table(rng)
    picks = rng.choice(len(table), size=max(64, (size - len(data_text)) // 2), p=weights)
    lengths = rng.integers(20, 400, size=picks.size // 20 + 1)
    bodies, at = [], 0
    for count in lengths:
        if at >= picks.size:
            break
        ops = b"".join(table[i] for i in picks[at : at + count]) + b"\x0b"
        at += count
        body = b"\x01" + _leb(8) + b"\x7f" + ops
        bodies.append(_leb(len(body)) + body)
    functions = _leb(len(bodies)) + b"".join(_leb(int(t)) for t in rng.integers(0, 4, len(bodies)))
    code = _leb(len(bodies)) + b"".join(bodies)
    data = _leb(1) + b"\x00\x41" + _leb(1024) + b"\x0b" + _leb(len(data_text)) + data_text
    return (b"\0asm" + struct.pack("<I", 1) + _section(1, types) + _section(3, functions)
            + _section(5, b"\x01\x00\x02") + _section(10, code) + _section(11, data))


def _wasm(count: int, big: int, max_size: int) -> list[Sample]:
    found = sorted(p for p in glob.glob(str(ROOT / ".venv/lib/python3*/site-packages/**/*.wasm"), recursive=True)
                   if _regular(p))
    samples = [Sample(f"wasm/{os.path.basename(p)}", "wasm", os.path.getsize(p), _reader(p)) for p in found[:1]]
    for i in range(count - len(samples)):
        size = (1 << 20) + i * (min(4 << 20, max_size) - (1 << 20)) // max(1, big) if i < big else (16 << 10) << (i % 6)
        samples.append(Sample(f"wasm/built-{i}-{size}", "wasm", size, lambda size=size, i=i: build_wasm(size, i)))
    return samples


# -------------------------------------------------------------------------------------- sparse


def build_sparse(source: bytes, size: int, seed: str) -> bytes:
    """``size`` bytes of 4 KiB-aligned extents of ``source`` separated by zero holes of 1–64 blocks."""
    rng = _seeded(seed)
    out = bytearray(size)
    pos, src = 0, 0
    while pos < size:
        extent = int(rng.integers(1, 65)) * 4096
        chunk = source[src : src + extent]
        if len(chunk) < extent:
            src, chunk = 0, source[:extent]
        out[pos : pos + len(chunk)] = chunk[: size - pos]
        src += extent
        pos += extent + int(rng.integers(1, 65)) * 4096
    return bytes(out[:size])


def _sparse(count: int, big: int, max_size: int) -> list[Sample]:
    sources = _order([p for p in glob.glob("/usr/lib/x86_64-linux-gnu/*.so*") if _regular(p, 1 << 20) and _is_elf(p)],
                     "sparse")
    samples = []
    for i in range(count):
        size = (1 << 20) + i * ((max_size - (1 << 20)) // max(1, big)) if i < big else (64 << 10) << (i % 4)
        kind = ("library", "text", "compressed")[i % 3]
        lib = sources[i % len(sources)] if sources else None

        def load(size: int = size, kind: str = kind, lib: str | None = lib, i: int = i) -> bytes:
            if kind == "library" and lib:
                source = Path(lib).read_bytes()
            elif kind == "compressed":
                source = gzip.compress(_documents(size), 6, mtime=0)
            else:
                source = _documents(size)
            return build_sparse(source, size, f"sparse-{i}")

        samples.append(Sample(f"sparse/{kind}-{i}-{size}", "sparse", size, load))
    return samples


def build_corpus(per_category: int = 30, big_per_category: int = 15, max_size: int = MAX_SIZE) -> list[Sample]:
    """The clean corpus: ``per_category`` samples of each category (half as many WASM modules),
    ``big_per_category`` of them of 1 MiB to ``max_size``."""
    wasm_count = max(1, per_category // 2)
    big = big_per_category
    return (_files("executable", per_category, big, max_size) + _files("library", per_category, big, max_size)
            + _compressed(per_category, big, max_size) + _text(per_category, big, max_size)
            + _wasm(wasm_count, max(1, big // 2), max_size) + _sparse(per_category, big, max_size))


def damaged_variants(samples: list[Sample], data: dict[str, bytes] | None = None) -> Iterator[tuple[Damaged, int]]:
    """(variant, size) for each sample of 1–16 MiB: one zeroed and one noise-filled DAMAGE_BYTES range.

    A zeroed range that lands on zeros (a hole of a sparse file) changes nothing: its offset is drawn
    again (same seed, next draw) until at least half of the range's bytes change.
    """
    for sample in samples:
        content = data[sample.name] if data is not None else None
        size = len(content) if content is not None else sample.size or len(sample.load())
        if not DAMAGE_MIN_SIZE <= size <= MAX_SIZE:
            continue
        for kind in ("zeros", "noise"):
            rng = _seeded(f"{sample.name}:{kind}")
            start = int(rng.integers(0, size - DAMAGE_BYTES))
            if kind == "zeros":
                content = content if content is not None else sample.load()
                while content[start : start + DAMAGE_BYTES].count(0) > DAMAGE_BYTES // 2:
                    start = int(rng.integers(0, size - DAMAGE_BYTES))
            yield Damaged(sample, kind, start), size


def strip_metadata(png: bytes) -> bytes:
    """The PNG without its text chunks: what a PixelRTS image is after a tool dropped the metadata."""
    out, pos = [png[:8]], 8
    while pos < len(png):
        length = struct.unpack(">I", png[pos : pos + 4])[0]
        if png[pos + 4 : pos + 8] not in (b"tEXt", b"zTXt", b"iTXt"):
            out.append(png[pos : pos + 12 + length])
        pos += 12 + length
    return b"".join(out)


def write_plain(data: bytes, path: Path) -> Path:
    """Encode ``data`` with our encoder (PNG level 1: the corpus is large) and write it stripped, no sidecar."""
    from healing.pixelrts import encode

    path.write_bytes(strip_metadata(encode(data, compression_level=1).png))
    return path


# ---------------------------------------------------------------------------------- evaluation

ROWS = ("clean", "zeros", "noise")
STATUSES = ("healthy", "warning", "critical")


@dataclass
class Outcome:
    """What the checker said of one corpus image (plain PNG, no sidecar, no baseline)."""

    name: str
    category: str
    half: str
    row: str  # clean, zeros or noise
    damage: tuple[int, int] | None
    status: str
    before: str  # the status the entropy z-score rule of issue 14 gave (healing.analysis.anomaly.assess)
    hints: list[tuple[str, tuple[int, int]]]  # drawn likely places: (kind, byte range)
    withheld: int
    seconds: float

    @property
    def first_hint_overlaps(self) -> bool | None:
        """Whether the strongest hint overlaps the damage; None without damage or hints."""
        if self.damage is None or not self.hints:
            return None
        start, end = self.hints[0][1]
        return start < self.damage[1] and end > self.damage[0]


def check_plain(checker, data: bytes, path: Path, *, name: str, category: str, half: str, row: str,
                damage: tuple[int, int] | None) -> Outcome:
    """Write ``data`` as a stripped plain PNG at ``path`` and check it (``checker``: VLMHealthChecker)."""
    import time

    from healing.analysis.anomaly import assess

    write_plain(data, path)
    started = time.perf_counter()
    result = checker.check_health(path)
    seconds = time.perf_counter() - started
    anomaly = result.analysis["anomaly"]
    old = assess(result.analysis["entropy"], checker.anomaly_model).score
    before = ("critical" if old >= checker.critical_threshold else "warning" if old >= checker.warning_threshold
              else "healthy")
    path.unlink()
    return Outcome(name, category, half, row, damage, result.status.value, before,
                   [(o.kind, o.byte_range) for o in anomaly.outliers], len(anomaly.withheld), seconds)


def evaluate(checker, samples: list[Sample], workdir: Path, *, progress: Callable[[str], None] | None = None) -> list[Outcome]:
    """Check every clean sample and its damaged variants as plain PNGs written under ``workdir``."""
    outcomes = []
    contents: dict[str, bytes] = {}
    for sample in samples:
        data = sample.load()
        if not MIN_SIZE <= len(data) <= MAX_SIZE:
            continue
        contents[sample.name] = data
        stem = hashlib.sha256(sample.name.encode()).hexdigest()[:16]  # a new file for each check: no cache hit
        outcomes.append(check_plain(checker, data, workdir / f"{stem}.png", name=sample.name, category=sample.category,
                                    half=sample.half, row="clean", damage=None))
        if progress:
            progress(sample.name)
        for variant, _size in damaged_variants([sample], contents):
            outcomes.append(check_plain(checker, variant.load(), workdir / f"{stem}-{variant.kind}.png", name=variant.name,
                                        category=sample.category, half=sample.half, row=variant.kind,
                                        damage=(variant.start, variant.end)))
        del contents[sample.name]
    return outcomes


def confusion(outcomes: list[Outcome], *, before: bool = False) -> dict[str, dict[str, int]]:
    """{row: {status: count}} for rows clean / zeros / noise (``before``: the old rule's statuses)."""
    table = {row: dict.fromkeys(STATUSES, 0) for row in ROWS}
    for o in outcomes:
        table[o.row][o.before if before else o.status] += 1
    return table


def hint_overlap(outcomes: list[Outcome]) -> dict[str, tuple[int, int]]:
    """{kind: (damaged images whose first hint, of that kind, overlaps the damage, damaged images with such a hint)}."""
    rates: dict[str, list[int]] = {}
    for o in outcomes:
        if o.first_hint_overlaps is None:
            continue
        entry = rates.setdefault(o.hints[0][0], [0, 0])
        entry[0] += int(o.first_hint_overlaps)
        entry[1] += 1
    return {kind: (hit, total) for kind, (hit, total) in sorted(rates.items())}


def rates(outcomes: list[Outcome], *, before: bool = False) -> dict[str, float]:
    """false_critical and false_warning (% of clean images), detection (% of damaged images flagged)."""
    table = confusion(outcomes, before=before)
    clean = sum(table["clean"].values())
    damaged = sum(sum(table[row].values()) for row in ("zeros", "noise"))
    flagged = sum(table[row]["warning"] + table[row]["critical"] for row in ("zeros", "noise"))
    return {"false_critical": 100 * table["clean"]["critical"] / max(1, clean),
            "false_warning": 100 * table["clean"]["warning"] / max(1, clean),
            "detection": 100 * flagged / max(1, damaged), "clean": clean, "damaged": damaged}


def format_table(outcomes: list[Outcome], title: str, *, before: bool = False) -> str:
    """The confusion table (clean/damaged × healthy/warning/critical) with its rates, as text."""
    table = confusion(outcomes, before=before)
    r = rates(outcomes, before=before)
    lines = [f"{title}: {r['clean']} clean, {r['damaged']} damaged (64 KiB) images",
             f"  {'':<16}" + "".join(f"{s:>10}" for s in STATUSES)]
    for row in ROWS:
        label = "clean" if row == "clean" else f"damaged {row}"
        lines.append(f"  {label:<16}" + "".join(f"{table[row][s]:>10}" for s in STATUSES))
    lines.append(f"  false critical {r['false_critical']:.1f} %, false warning {r['false_warning']:.1f} %, "
                 f"detection {r['detection']:.1f} %")
    return "\n".join(lines)
