"""Reading a vision model's answer into validated findings.

Models are asked for one JSON object (see :mod:`healing.vision.prompt`) but answer in every shape:
fenced code blocks, prose around the object, Python-style literals with single quotes or trailing
commas, or the bullet lists of the image guide ("Anomalies:" followed by "- …" items). This module
accepts all of those, validates every field against the finding contract of DESIGN.md §4, and
returns None when nothing usable is there — the provider then reports an unusable answer instead
of inventing a verdict.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from healing.vision._types import CATEGORIES, Region
from healing.vision.regions import clamp_region

MAX_ANSWER_CHARS = 64_000  # longer answers are cut before parsing: bounds the work on hostile input
MAX_FINDINGS = 50
MAX_DESCRIPTION_CHARS = 500
MAX_SUMMARY_CHARS = 1000
DEFAULT_CONFIDENCE = 0.5  # when a usable answer states no confidence, it is neither trusted nor dismissed

_CATEGORY_WORDS = (
    ("corrupt", "corruption"), ("bit flip", "corruption"), ("truncat", "corruption"), ("damage", "corruption"),
    ("anomal", "anomaly"), ("unusual", "anomaly"), ("unexpected pattern", "anomaly"),
    ("struct", "structural"), ("header", "structural"), ("malformed", "structural"),
    ("secur", "security"), ("malware", "security"), ("tamper", "security"), ("ransom", "security"),
    ("encrypt", "security"),
    ("perform", "performance"), ("size", "performance"), ("slow", "performance"),
)
_SEVERITY_WORDS = (
    ("critical", "high"), ("severe", "high"), ("high", "high"), ("major", "high"),
    ("medium", "medium"), ("moderate", "medium"), ("warning", "medium"),
    ("low", "low"), ("minor", "low"), ("info", "low"), ("negligible", "low"),
)
# In free text "high"/"low" usually describe entropy, not severity, so only unambiguous words count.
_SEVERITY_TEXT_WORDS = (
    ("critical", "high"), ("severe", "high"), ("serious", "high"), ("major", "high"),
    ("moderate", "medium"),
    ("minor", "low"), ("negligible", "low"), ("slight", "low"), ("harmless", "low"),
)
_NOTHING_FOUND = re.compile(
    r"^\s*((none|n/?a|nothing)(\s+(found|detected|observed|visible|seen))?"
    r"|no\b.*\b(found|detected|issues?|anomal\w*|observed|visible)"
    r"|(looks |appears |seems )?(normal|fine|healthy|ok|clean))\W*$",
    re.I,
)


@dataclass
class ParsedFinding:
    category: str
    severity: str
    description: str
    region: Region | None = None


@dataclass
class ParsedAnswer:
    summary: str
    confidence: float
    findings: list[ParsedFinding] = field(default_factory=list)
    answer_format: str = "json"  # "json" or "bullets"


def parse_answer(text: str, image_size: tuple[int, int]) -> ParsedAnswer | None:
    """Parse a model's answer; regions are clamped to ``image_size`` (width, height). None if unusable."""
    text = (text or "")[:MAX_ANSWER_CHARS]
    obj = extract_json_object(text)
    if obj is not None and _looks_like_answer(obj):
        return _from_object(obj, image_size)
    return _from_bullets(text, image_size)


# --------------------------------------------------------------------------- JSON

def extract_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON-ish object in ``text`` as a dict, tolerating fences, prose and Python literals."""
    for candidate in _object_candidates(text):
        for loader in (_load_json, _load_lenient):
            value = loader(candidate)
            if isinstance(value, dict):
                return value
    return None


def _object_candidates(text: str) -> list[str]:
    """Balanced ``{…}`` spans, fenced blocks first (a model's explanation may contain other braces)."""
    fenced = re.findall(r"```(?:json|JSON|javascript|python)?\s*\n?(.*?)```", text, re.S)
    out: list[str] = []
    for source in [*fenced, text]:
        start = source.find("{")
        while start != -1 and len(out) < 8:
            end = _matching_brace(source, start)
            if end is None:
                break
            out.append(source[start : end + 1])
            start = source.find("{", end + 1)
    return out


def _matching_brace(text: str, start: int) -> int | None:
    depth = 0
    quote: str | None = None
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            # An apostrophe inside prose-like values ("it's") would derail the scan; only treat it as a
            # quote when it opens a token (after a delimiter), which is where Python literals put it.
            prev = text[i - 1] if i > start else "{"
            if ch == '"' or prev in "{[,: \t\n":
                quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _load_json(candidate: str) -> Any:
    try:
        return json.loads(candidate)
    except ValueError:
        pass
    try:  # trailing commas are the most common slip
        return json.loads(re.sub(r",\s*([}\]])", r"\1", candidate))
    except ValueError:
        return None


_LITERAL_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


def _load_lenient(candidate: str) -> Any:
    """Python-literal syntax (single quotes, trailing commas, True/None) via a restricted AST walk."""
    try:
        tree = ast.parse(candidate, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    try:
        return _literal(tree.body, depth=0)
    except ValueError:
        return None


def _literal(node: ast.AST, depth: int) -> Any:
    if depth > 20:
        raise ValueError("too deep")
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float | bool | type(None)):
        return node.value
    if isinstance(node, ast.Name) and node.id in _LITERAL_NAMES:
        return _LITERAL_NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand, depth + 1)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Dict):
        return {_literal(k, depth + 1) if k is not None else None: _literal(v, depth + 1)
                for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(e, depth + 1) for e in node.elts]
    raise ValueError("not a literal")


def _looks_like_answer(obj: Mapping[str, Any]) -> bool:
    return any(key in obj for key in ("findings", "summary", "confidence"))


def _from_object(obj: Mapping[str, Any], image_size: tuple[int, int]) -> ParsedAnswer:
    findings: list[ParsedFinding] = []
    raw = obj.get("findings")
    if isinstance(raw, list):
        for item in raw[:MAX_FINDINGS]:
            if isinstance(item, Mapping):
                finding = _finding_from_mapping(item, image_size)
            elif isinstance(item, str) and item.strip():
                finding = _finding_from_text(item, None, image_size)
            else:
                finding = None
            if finding is not None:
                findings.append(finding)
    return ParsedAnswer(
        summary=_clip(obj.get("summary"), MAX_SUMMARY_CHARS),
        confidence=normalize_confidence(obj.get("confidence")),
        findings=findings,
        answer_format="json",
    )


def _finding_from_mapping(item: Mapping[str, Any], image_size: tuple[int, int]) -> ParsedFinding | None:
    description = _clip(item.get("description") or item.get("details") or item.get("issue"), MAX_DESCRIPTION_CHARS)
    category = normalize_category(item.get("category") or item.get("type"), fallback_text=description)
    if not description:
        description = f"{category} reported without description"
    return ParsedFinding(
        category=category,
        severity=normalize_severity(item.get("severity"), fallback_text=description),
        description=description,
        region=normalize_region(item.get("region") or item.get("bbox"), image_size),
    )


# --------------------------------------------------------------------------- bullets (the guide's format)

_HEADER = re.compile(r"^\s*(?:#+\s*|\*\*)?([A-Za-z][A-Za-z /_-]{1,40}?)(?:\*\*)?\s*:\s*(?:\*\*)?\s*(.*)$")
_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.*\S)\s*$")


def _section_for_header(name: str) -> str | None:
    """What a header line opens: a category, "generic" findings, "summary", "confidence" or nothing."""
    name = name.strip().lower()
    for prefix, section in (("anomal", "anomaly"), ("corrupt", "corruption"), ("struct", "structural"),
                            ("secur", "security"), ("perform", "performance"), ("confidence", "confidence")):
        if name.startswith(prefix):
            return section
    if name in ("summary", "overall", "assessment", "overall assessment", "conclusion"):
        return "summary"
    if name.endswith(("issues", "findings", "problems", "concerns")):
        return "generic"
    return None


def _from_bullets(text: str, image_size: tuple[int, int]) -> ParsedAnswer | None:
    """The guide's format: section headers ("Anomalies:") followed by "- item" lines.

    Items count only under a recognised header, so prose that merely happens to use bullets is not
    mistaken for findings; None when no recognised header is present at all.
    """
    section: str | None = None
    saw_section = False
    summary_parts: list[str] = []
    confidence: Any = None
    findings: list[ParsedFinding] = []

    def add(body: str) -> None:
        if section is None or _NOTHING_FOUND.match(body) or len(findings) >= MAX_FINDINGS:
            return
        finding = _finding_from_text(body, None if section == "generic" else section, image_size)
        if finding is not None:
            findings.append(finding)

    for line in text.splitlines():
        item = _ITEM.match(line)
        if item:
            if section == "summary":
                summary_parts.append(item.group(1))
            elif section not in (None, "confidence"):
                add(item.group(1))
            continue
        header = _HEADER.match(line)
        if not header:
            continue
        kind, rest = _section_for_header(header.group(1)), header.group(2).strip()
        if kind == "confidence":
            confidence = rest
            continue
        section = kind
        if kind is None:
            continue
        saw_section = True
        if rest and kind == "summary":
            summary_parts.append(rest)
        elif rest:
            add(rest)
    if not saw_section:
        return None
    return ParsedAnswer(
        summary=_clip(" ".join(summary_parts), MAX_SUMMARY_CHARS),
        confidence=normalize_confidence(confidence),
        findings=findings,
        answer_format="bullets",
    )


_REGION_IN_TEXT = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*\]")


def _finding_from_text(body: str, category: str | None, image_size: tuple[int, int]) -> ParsedFinding | None:
    description = _clip(body, MAX_DESCRIPTION_CHARS)
    if not description:
        return None
    match = _REGION_IN_TEXT.search(body)
    region = normalize_region([float(g) for g in match.groups()], image_size) if match else None
    return ParsedFinding(
        category=category or normalize_category(None, fallback_text=body),
        severity=normalize_severity(None, fallback_text=body),
        description=description,
        region=region,
    )


# --------------------------------------------------------------------------- field validation

def normalize_category(value: Any, *, fallback_text: str = "", default: str | None = "anomaly") -> str | None:
    """One of CATEGORIES: exact names first, then telling words in the value or the description."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in CATEGORIES:
            return word
        for needle, category in _CATEGORY_WORDS:
            if needle in word:
                return category
    text = fallback_text.lower()
    for needle, category in _CATEGORY_WORDS:
        if needle in text:
            return category
    return default


def normalize_severity(value: Any, *, fallback_text: str = "") -> str:
    """One of SEVERITIES; unknown or missing severities count as medium unless the text says otherwise."""
    for source, vocabulary in ((value if isinstance(value, str) else "", _SEVERITY_WORDS),
                               (fallback_text, _SEVERITY_TEXT_WORDS)):
        words = set(re.findall(r"[a-z]+", source.lower()))
        for needle, severity in vocabulary:
            if needle in words:
                return severity
    if isinstance(value, int | float) and not isinstance(value, bool):
        # numeric severities (0..1 or 1..10 scales) are read as thirds of their scale
        scale = 1.0 if value <= 1 else 10.0
        ratio = value / scale
        return "high" if ratio >= 2 / 3 else "medium" if ratio >= 1 / 3 else "low"
    return "medium"


def normalize_confidence(value: Any) -> float:
    """A confidence in [0, 1]: percentages ("85%", 85) are scaled, other values clamped, junk → default."""
    percent = False
    if isinstance(value, str):
        text = value.strip()
        percent = text.endswith("%")
        match = re.search(r"-?\d+(?:\.\d+)?", text)
        if not match:
            return DEFAULT_CONFIDENCE
        value = float(match.group(0))
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN check
        return DEFAULT_CONFIDENCE
    number = float(value)
    if percent or 1.0 < number <= 100.0:
        number /= 100.0
    return min(1.0, max(0.0, number))


def normalize_region(value: Any, image_size: tuple[int, int]) -> Region | None:
    """[x, y, w, h] (or a mapping with x/y/w|width/h|height) clamped to the image; None if unusable."""
    if isinstance(value, Mapping):
        value = [value.get("x"), value.get("y"), value.get("w", value.get("width")), value.get("h", value.get("height"))]
    if not isinstance(value, list | tuple) or len(value) != 4:
        return None
    try:
        x, y, w, h = (int(round(float(v))) for v in value)
    except (TypeError, ValueError, OverflowError):
        return None
    return clamp_region((x, y, w, h), *image_size)


def _clip(value: Any, limit: int) -> str:
    if value is None:
        return ""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
