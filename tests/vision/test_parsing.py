"""Reading model answers: JSON in every common disguise, the guide's bullet lists, and validation."""

from __future__ import annotations

import json

import pytest

from healing.vision.parsing import (
    MAX_FINDINGS,
    ParsedFinding,
    normalize_category,
    normalize_confidence,
    normalize_region,
    normalize_severity,
    parse_answer,
)

SIZE = (4, 4)

CANONICAL = {
    "summary": "One corrupted block.",
    "confidence": 0.82,
    "findings": [
        {"category": "corruption", "severity": "high", "description": "noise block", "region": [1, 1, 2, 2]},
        {"category": "anomaly", "severity": "low", "description": "faint stripe", "region": None},
    ],
}
EXPECTED = [
    ParsedFinding("corruption", "high", "noise block", (1, 1, 2, 2)),
    ParsedFinding("anomaly", "low", "faint stripe", None),
]


def test_plain_json():
    parsed = parse_answer(json.dumps(CANONICAL), SIZE)
    assert parsed is not None
    assert (parsed.summary, parsed.confidence, parsed.answer_format) == ("One corrupted block.", 0.82, "json")
    assert parsed.findings == EXPECTED


def test_json_in_code_fence_with_prose_and_trailing_commas():
    body = json.dumps(CANONICAL, indent=2).replace('"faint stripe",', '"faint stripe",').replace("\n  ]", ",\n  ]")
    text = f"Here is my analysis {{of the image}}:\n```json\n{body}\n```\nHope this helps!"
    parsed = parse_answer(text, SIZE)
    assert parsed is not None and parsed.findings == EXPECTED and parsed.confidence == 0.82


def test_json_with_text_around_and_braces_in_strings():
    text = 'Result: {"summary": "braces {like this} inside", "confidence": 0.4, "findings": []} -- end'
    parsed = parse_answer(text, SIZE)
    assert parsed is not None
    assert (parsed.summary, parsed.confidence, parsed.findings) == ("braces {like this} inside", 0.4, [])


def test_python_style_literal_with_single_quotes():
    text = ("{'summary': 'it\\'s fine', 'confidence': True and 0.9 or 0, 'findings': []}")  # not a literal
    assert parse_answer(text, SIZE) is None
    text = "{'summary': 'it\\'s fine', 'confidence': 0.9, 'findings': [{'category': 'security', " \
           "'severity': 'medium', 'description': 'odd blob', 'region': [0, 0, 1, 1],},], 'extra': None}"
    parsed = parse_answer(text, SIZE)
    assert parsed is not None
    assert parsed.summary == "it's fine"
    assert parsed.findings == [ParsedFinding("security", "medium", "odd blob", (0, 0, 1, 1))]


def test_json_literals_true_false_null_in_lenient_mode():
    text = "{'summary': 'x', 'confidence': 0.3, 'healthy': true, 'findings': null,}"
    parsed = parse_answer(text, SIZE)
    assert parsed is not None and parsed.findings == [] and parsed.confidence == 0.3


def test_guide_bullet_format():
    text = """Visual analysis of the PixelRTS image.
Summary: mostly code with one damaged area
Anomalies:
- High entropy block at [0, 0, 2, 2] that breaks the texture
- severe stripe along the right edge
Corruption: None detected
Structural issues:
- header region malformed
Security Concerns:
- No tampering detected
Recommendations:
- re-encode the image
Confidence: 70%
"""
    parsed = parse_answer(text, SIZE)
    assert parsed is not None
    assert parsed.answer_format == "bullets"
    assert parsed.summary == "mostly code with one damaged area"
    assert parsed.confidence == 0.7
    assert parsed.findings == [
        ParsedFinding("anomaly", "medium", "High entropy block at [0, 0, 2, 2] that breaks the texture", (0, 0, 2, 2)),
        ParsedFinding("anomaly", "high", "severe stripe along the right edge", None),
        ParsedFinding("structural", "medium", "header region malformed", None),
    ]


def test_bullets_without_known_headers_are_not_findings():
    assert parse_answer("I looked at it.\n- it has colours\n- it is square", SIZE) is None


def test_headers_with_nothing_found_give_a_healthy_answer():
    parsed = parse_answer("Anomalies:\n- None\nCorruption:\n- No corruption detected.\n- looks normal", SIZE)
    assert parsed is not None and parsed.findings == [] and parsed.confidence == 0.5


@pytest.mark.parametrize("text", ["", "I cannot analyse images.", "{not json at all", "```\n```", "{}", '{"foo": 1}'])
def test_malformed_answers_are_unusable(text):
    assert parse_answer(text, SIZE) is None


def test_findings_are_validated_and_clamped():
    answer = {
        "summary": "s" * 2000,
        "confidence": "85%",
        "findings": [
            {"category": "Data Corruption", "severity": "CRITICAL", "description": "a", "region": [3, 3, 5, 5]},
            {"category": "weird", "severity": "catastrophic", "description": "b", "region": [10, 10, 2, 2]},
            {"type": "tampering", "severity": 0.9, "details": "c", "bbox": {"x": 1, "y": 0, "width": 1, "height": 9}},
            {"category": "performance", "description": "", "region": "top-left"},
            "malware-like blob",
            42,
        ],
    }
    parsed = parse_answer(json.dumps(answer), SIZE)
    assert parsed is not None
    assert parsed.confidence == 0.85
    assert len(parsed.summary) == 1000 and parsed.summary.endswith("…")
    assert parsed.findings == [
        ParsedFinding("corruption", "high", "a", (3, 3, 1, 1)),
        ParsedFinding("anomaly", "medium", "b", None),
        ParsedFinding("security", "high", "c", (1, 0, 1, 4)),
        ParsedFinding("performance", "medium", "performance reported without description", None),
        ParsedFinding("security", "medium", "malware-like blob", None),
    ]


def test_number_of_findings_is_capped():
    answer = {"findings": [{"category": "anomaly", "description": f"f{i}"} for i in range(200)]}
    parsed = parse_answer(json.dumps(answer), SIZE)
    assert parsed is not None and len(parsed.findings) == MAX_FINDINGS


@pytest.mark.parametrize(("value", "expected"), [
    (0.3, 0.3), (1, 1.0), (0, 0.0), (-0.4, 0.0), (85, 0.85), (250, 1.0), ("0.6", 0.6), ("90%", 0.9),
    ("high", 0.5), (None, 0.5), (True, 0.5), (float("nan"), 0.5),
])
def test_confidence(value, expected):
    assert normalize_confidence(value) == expected


@pytest.mark.parametrize(("value", "text", "expected"), [
    ("high", "", "high"), ("Critical", "", "high"), ("moderate", "", "medium"), ("info", "", "low"),
    (None, "a minor glitch", "low"), (None, "high entropy area", "medium"), (None, "severe damage", "high"),
    (2, "", "low"), (8, "", "high"), (0.5, "", "medium"), ("bogus", "", "medium"),
])
def test_severity(value, text, expected):
    assert normalize_severity(value, fallback_text=text) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("corruption", "corruption"), ("STRUCTURAL", "structural"), ("Possible malware", "security"),
    ("perf", "anomaly"), (None, "anomaly"), ("header damage", "corruption"),
])
def test_category(value, expected):
    assert normalize_category(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ([0, 0, 4, 4], (0, 0, 4, 4)), ([1.6, 0.4, 2.2, 1], (2, 0, 2, 1)), ([-2, -2, 3, 3], (0, 0, 1, 1)),
    ([0, 0, 0, 1], None), ([5, 5, 1, 1], None), ([1, 2, 3], None), ("1,2,3,4", None), (["a", 0, 1, 1], None),
    ({"x": 1, "y": 1, "w": 1, "h": 1}, (1, 1, 1, 1)),
])
def test_region(value, expected):
    assert normalize_region(value, SIZE) == expected
