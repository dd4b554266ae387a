"""The vLLM message catalogue (vllm_catalogue/catalogue.yaml) loaded and compiled for the Observer.

One :class:`Entry` per vLLM message: its keywords, compiled pattern, class, remedy function name and
samples. :func:`catalogue` loads the data file once per process; its ``prefilter`` section drives
healing/tuning/prefilter.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

CATALOGUE_PATH = Path(__file__).with_name("vllm_catalogue") / "catalogue.yaml"

# placeholders of the data file's patterns
MACROS = {
    "{NUM}": r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?",
    "{INT}": r"\d[\d,]*",
    "{UNIT}": r"(?:[KMGT]iB|bytes?|B)",
}
KINDS = ("failure", "cause", "soft")


@dataclass(frozen=True)
class Entry:
    """One catalogue entry, compiled."""

    id: str
    kind: str
    event_class: str
    variant: str
    keywords: tuple[str, ...]
    regex: re.Pattern[str]
    loose: re.Pattern[str]  # the same with optional blanks: for lines joined after a terminal's hard wrap
    remedy: str
    versions: tuple[str, ...]
    previous: re.Pattern[str] | None = None
    strong_only: bool = False
    class_by: str | None = None
    absorbs: tuple[str, ...] = ()
    samples: tuple[dict[str, Any], ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Catalogue:
    entries: tuple[Entry, ...]
    default_gmu: tuple[tuple[tuple[int, ...], Decimal], ...]  # (from version, value), ascending
    version_hints: tuple[tuple[str, str], ...]  # (text, minimum version)
    prefilter: dict[str, Any] = field(default_factory=dict)  # anchors, patterns, banner, context sizes

    @property
    def event_classes(self) -> tuple[str, ...]:
        out: dict[str, None] = {}
        for e in self.entries:
            out[e.event_class] = None
        return tuple(out)


def expand(pattern: str) -> str:
    for key, value in MACROS.items():
        pattern = pattern.replace(key, value)
    return pattern


def loosen(pattern: str) -> str:
    """Make every literal blank optional: joining hard-wrapped lines loses the blank at a word break
    (the terminal cut there) but never splits a number."""
    return pattern.replace(r"\s+", r"\s*").replace(" ", " ?")


def version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.lstrip("v").split(".")[:3]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _entry(raw: dict[str, Any]) -> Entry:
    for key in ("id", "kind", "class", "keywords", "pattern", "remedy", "samples", "versions"):
        if key not in raw:
            raise ValueError(f"catalogue entry {raw.get('id', '?')}: missing {key!r}")
    if raw["kind"] not in KINDS:
        raise ValueError(f"catalogue entry {raw['id']}: kind must be one of {KINDS}")
    if not raw["samples"]:
        raise ValueError(f"catalogue entry {raw['id']}: at least one sample is required")
    prev = raw.get("previous")
    return Entry(
        id=raw["id"], kind=raw["kind"], event_class=raw["class"], variant=str(raw.get("variant", "")), keywords=tuple(raw["keywords"]),
        regex=re.compile(expand(raw["pattern"])), loose=re.compile(loosen(expand(raw["pattern"]))), remedy=raw["remedy"]["function"], versions=tuple(raw["versions"]),
        previous=re.compile(expand(prev)) if prev else None, strong_only=bool(raw.get("strong_only")),
        class_by=raw.get("class_by"), absorbs=tuple(raw.get("absorbs") or ()), samples=tuple(raw["samples"]), raw=raw)


def load(path: Path = CATALOGUE_PATH) -> Catalogue:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10× faster, it is on every CLI start
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 - a safe loader
    defaults = data.get("defaults") or {}
    gmu = tuple(sorted((version_tuple(d["from"]), Decimal(d["value"])) for d in defaults.get("gpu_memory_utilization") or ()))
    hints = tuple((h["text"], h["min"]) for h in defaults.get("version_hints") or ())
    return Catalogue(tuple(_entry(e) for e in data["entries"]), gmu, hints, dict(data.get("prefilter") or {}))


@lru_cache(maxsize=1)
def catalogue() -> Catalogue:
    """The packaged catalogue, loaded once."""
    return load()


def default_gmu(version: str | None) -> Decimal:
    """vLLM's default gpu_memory_utilization for a version (the oldest row when unknown)."""
    rows = catalogue().default_gmu
    if not version:
        return rows[0][1]
    vt = version_tuple(version)
    value = rows[0][1]
    for start, v in rows:
        if vt >= start:
            value = v
    return value


def percent_at_least(threshold: Decimal) -> str:
    """Regex for a printed percentage ``NN.N`` whose integer part is ≥ floor(threshold) (a superset)."""
    low = max(0, min(100, int(threshold)))
    return "(?:" + "|".join(str(n) for n in range(100, low - 1, -1)) + r")\."
