"""Damaged ranges where no hash decides: zero-filled and noise-filled runs of a curve-ordered stream.

A plain PNG (or a PixelRTS image whose metadata was stripped) offers nothing to compare against, so
a range is suspicious only against the file's own statistics and what real files look like. The
rules and their numbers (``RangeModel``) were calibrated on a corpus of real files of this machine —
executables, libraries, compressed archives, text, WASM, sparse files — see docs/statistics.md.

zero runs   A run of zero bytes of at least ``zero_min_bytes`` inside the data. Filesystems, disk
            images and linkers pad to ``align_bytes`` boundaries, so a run that starts and ends on
            such a boundary (within ``align_slack`` bytes: real data beside a hole often ends or
            starts with a few zeros) is a hole, not damage. A run of ``zero_critical_bytes`` or more
            that is the only candidate of the file is critical, any other candidate a warning.
noise runs  Blocks whose byte histogram is as flat as random data's (chi-square against a flat
            histogram below ``uniform_chi2``: random blocks give 255 ± 23, code and text thousands).
            In a file whose other blocks are mostly flat (compressed, encrypted) noise cannot be told
            from content and nothing is flagged. Otherwise a run of ``noise_min_bytes`` is a candidate,
            a warning. In a low-entropy file (text, small programs: the median entropy of its
            blocks that are not all zero is below ``low_entropy_median``) runs of ``noise_min_bytes_low``
            count, and one of ``noise_critical_bytes`` or more with no other flat run is critical.
            Elsewhere noise is at most a warning: 3 of the 1,033 ELF files of /usr/bin and
            /usr/lib/x86_64-linux-gnu carry a random-looking table of 48 KiB or more (libgnutls,
            libcrypto, curl).
several     Of several runs of one kind only the longest counts, and only when it is ``dominance``
            times longer than every other (python3.11 carries two zero runs of 106,027 bytes, a jar
            many short flat runs): damage stands out against the file's own runs.
sections    A candidate longer than ``section_fraction`` of the data is a part of the file rather
            than a local defect: a noise section (an archive appended to a program, a random+text
            payload) is not flagged, a zero section is at most a warning.

The anomaly score is ``critical_score`` when a candidate is critical, ``warning_score`` when one is
a warning, else 0; against the default thresholds (0.7 / 0.9) they give those statuses. Candidates
become "likely place" hints only for the kinds whose localisation met ``min_hint_overlap`` on the
held-out half of the corpus (``zero_hint_overlap``, ``noise_hint_overlap``, measured by
bench/bench_calibration.py); the others are counted but not drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from healing.analysis.entropy import EntropyMap

ZEROS = "zeros"
NOISE = "noise"


@dataclass(frozen=True)
class RangeModel:
    """Parameters of the range detector (meaning in the module docstring; figures in docs/statistics.md)."""

    zero_min_bytes: int = 16 << 10
    zero_critical_bytes: int = 32 << 10
    align_bytes: int = 4096
    align_slack: int = 256
    uniform_chi2: float = 400.0
    noise_min_bytes: int = 16 << 10
    noise_min_bytes_low: int = 8 << 10
    noise_critical_bytes: int = 48 << 10
    low_entropy_median: float = 5.0
    flat_file_fraction: float = 0.5  # other blocks flat at least this often: a compressed file, noise undetectable
    section_fraction: float = 0.25
    dominance: float = 2.0  # with other runs of its kind, a run counts only when this many times longer than each
    warning_score: float = 0.8
    critical_score: float = 0.95
    min_hint_overlap: float = 0.8
    # First hint overlapping the damage, held-out half of bench/bench_calibration.py (docs/statistics.md):
    zero_hint_overlap: float = 0.89  # 34 of 38 damaged images
    noise_hint_overlap: float = 0.97  # 28 of 29

    def hint_overlap(self, kind: str) -> float:
        return self.zero_hint_overlap if kind == ZEROS else self.noise_hint_overlap

    def draws_hints(self, kind: str) -> bool:
        """Whether candidates of ``kind`` are shown as likely places (their calibrated overlap suffices)."""
        return self.hint_overlap(kind) >= self.min_hint_overlap


@dataclass(frozen=True)
class Candidate:
    """One suspicious run: kind (zeros/noise), byte range [start, end) of the stream, verdict."""

    kind: str
    start: int
    end: int
    critical: bool
    reason: str

    @property
    def length(self) -> int:
        return self.end - self.start


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index runs of True in a boolean array."""
    if mask.size == 0:
        return []
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def _zero_runs(stream: np.ndarray, emap: EntropyMap, data_length: int) -> list[tuple[int, int]]:
    """Exact [start, end) runs of zero bytes that contain at least one whole zero block.

    Whole zero blocks come from the block histograms; each run of them is then extended byte by byte
    into its neighbouring blocks, so only two partial blocks per run are read.
    """
    assert emap.zero_bytes is not None
    block = emap.block_size
    full = data_length // block
    if full == 0:
        return []
    zero_blocks = emap.zero_bytes[:full] == block
    out = []
    for first, last in _runs(zero_blocks):
        start, end = first * block, last * block
        before = stream[max(0, start - block) : start]
        nonzero = np.flatnonzero(before)
        start -= before.size - (int(nonzero[-1]) + 1 if nonzero.size else 0)
        after = stream[end : min(data_length, end + block)]
        nonzero = np.flatnonzero(after)
        end += int(nonzero[0]) if nonzero.size else after.size
        out.append((start, end))
    return out


def _aligned(start: int, end: int, data_length: int, model: RangeModel) -> bool:
    a, slack = model.align_bytes, model.align_slack
    starts_on_boundary = start == 0 or (-start) % a <= slack
    ends_on_boundary = end >= data_length or end % a <= slack
    return starts_on_boundary and ends_on_boundary


def find_candidates(stream: np.ndarray, emap: EntropyMap, model: RangeModel = RangeModel()) -> list[Candidate]:
    """The suspicious zero and noise runs of a curve stream's data, critical ones first, then by length."""
    if emap.uniformity is None or emap.zero_bytes is None or emap.data_length is None:
        raise ValueError("find_candidates needs the entropy map of a curve stream (entropy_map)")
    data_length = min(int(emap.data_length), int(stream.size))
    block = emap.block_size
    full = data_length // block
    if full == 0:
        return []
    section = model.section_fraction * data_length
    found: list[Candidate] = []

    zeros = [(s, e) for s, e in _zero_runs(stream, emap, data_length) if not _aligned(s, e, data_length, model)]
    zero_run = _standout(zeros, model.zero_min_bytes, model.dominance)
    if zero_run is not None:
        (start, end), alone = zero_run
        if end - start > section:
            found.append(Candidate(ZEROS, start, end, False,
                                   f"a zero section of {100 * (end - start) / data_length:.0f} % of the data"))
        else:
            critical = alone and end - start >= model.zero_critical_bytes
            why = ("the only long zero run of the file, not on a block boundary" if critical else
                   "a zero run not on a block boundary" if alone else
                   f"a zero run over {model.dominance:g}x longer than any other of the file")
            found.append(Candidate(ZEROS, start, end, critical, why))

    flat = emap.uniformity[:full] < model.uniform_chi2
    structured = emap.zero_bytes[:full] < block  # blocks that are not all zero (holes say nothing of the type)
    entropies = emap.blocks[:full][structured]
    low = entropies.size > 0 and float(np.median(entropies)) < model.low_entropy_median
    min_bytes = model.noise_min_bytes_low if low else model.noise_min_bytes
    flat_runs = [(s * block, e * block) for s, e in _runs(flat)]
    total_flat, others = int(flat.sum()), int(structured.sum())
    noise_run = _standout(flat_runs, min_bytes, model.dominance, shortest_other=2 * block)
    if noise_run is not None:
        (start, end), alone = noise_run
        count = (end - start) // block
        rest_flat = (total_flat - count) / max(1, others - count)
        # In a mostly flat file (compressed, encrypted) noise cannot be told from content; a run over
        # section_fraction of the data is a random section of a mixed file (an archive appended to a
        # program, a random+text payload), not a local defect.
        if rest_flat < model.flat_file_fraction and end - start <= section:
            critical = alone and low and end - start >= model.noise_critical_bytes
            why = ("the only random-looking run of a low-entropy file" if critical else
                   "a random-looking run" if alone else
                   f"a random-looking run over {model.dominance:g}x longer than any other of the file")
            found.append(Candidate(NOISE, start, end, critical, why))
    found.sort(key=lambda c: (not c.critical, -c.length))
    return found


def _standout(runs: list[tuple[int, int]], min_bytes: int, dominance: float,
              shortest_other: int = 1) -> tuple[tuple[int, int], bool] | None:
    """The longest run if it reaches ``min_bytes`` and is ``dominance`` times longer than every other
    run of at least ``shortest_other`` bytes; with whether it is alone (no such other run)."""
    if not runs:
        return None
    longest = max(runs, key=lambda r: r[1] - r[0])
    length = longest[1] - longest[0]
    others = [e - s for s, e in runs if (s, e) != longest and e - s >= shortest_other]
    if length < min_bytes or (others and length < dominance * max(others)):
        return None
    return longest, not others


def range_score(candidates: list[Candidate], model: RangeModel = RangeModel()) -> float:
    """``critical_score`` if any candidate is critical, ``warning_score`` if any exists, else 0."""
    if any(c.critical for c in candidates):
        return model.critical_score
    return model.warning_score if candidates else 0.0
