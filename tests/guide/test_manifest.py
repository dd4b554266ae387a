"""Every ```python block of the guide is covered: run by a test, excluded with a reason, or a reference
definition compared with ours; and the tests change nothing but import lines."""

from __future__ import annotations

import ast
import dataclasses

from tests.guide.manifest import EXCLUDED, REFERENCE, SNIPPETS, python_blocks


def test_every_block_is_accounted_for() -> None:
    blocks = python_blocks()
    covered = sorted([s.index for s in SNIPPETS.values()] + list(EXCLUDED) + list(REFERENCE))
    assert covered == list(range(len(blocks))) == list(range(12))


def test_only_import_lines_are_rewritten() -> None:
    blocks = python_blocks()
    for name, snippet in SNIPPETS.items():
        for old, new in snippet.rewrites.items():
            assert old.startswith("from systems.") and old in blocks[snippet.index].splitlines(), name
            assert all(line.startswith(("from healing.", "import os")) for line in new.splitlines()), name
        assert all(line.startswith("from healing.") for line in snippet.prelude), name


def test_the_excluded_block_really_cannot_run_as_a_module() -> None:
    source = python_blocks()[8]
    assert "from systems.neural_cortex.evolution_protocol_server import EvolutionProtocolServer" in source
    try:
        compile(source, "guide-block-8", "exec")
    except SyntaxError as exc:
        assert "'await' outside function" in str(exc)
    else:  # pragma: no cover - the guide changed: run it instead
        raise AssertionError("the Evolution Daemon block parses now; give it a test")


def test_reference_definitions_match_ours() -> None:
    from healing.analysis import HealthCheckResult, HealthStatus

    blocks = python_blocks()
    enum_members = [node.targets[0].id for node in ast.parse(blocks[10]).body[0].body if isinstance(node, ast.Assign)]
    values = [node.value.value for node in ast.parse(blocks[10]).body[0].body if isinstance(node, ast.Assign)]
    assert [(m.name, m.value) for m in HealthStatus] == list(zip(enum_members, values, strict=True))
    fields = [node.target.id for node in ast.parse(blocks[11]).body[0].body if isinstance(node, ast.AnnAssign)]
    ours = [f.name for f in dataclasses.fields(HealthCheckResult)]
    assert fields == ours[: len(fields)] == ["image_path", "status", "confidence", "metrics", "findings",
                                             "recommendation", "timestamp"]


def test_the_copy_of_the_guides_blocks_matches_the_guide() -> None:
    """CI runs these tests from tests/guide/guide_blocks.md; it must hold exactly the guide's code blocks."""
    import re

    import pytest

    from tests.guide.manifest import BLOCKS_COPY, SHARED_GUIDE

    if not SHARED_GUIDE.is_file():
        pytest.skip(f"the guide is not beside the project ({SHARED_GUIDE}); the copy is used as it is")
    fence = re.compile(r"^([ \t]*)```(\w+)\n(.*?)^\1```", re.S | re.M)

    def blocks(path):
        import textwrap

        return [(m.group(2), textwrap.dedent(m.group(3))) for m in fence.finditer(path.read_text(encoding="utf-8"))]

    assert blocks(BLOCKS_COPY) == blocks(SHARED_GUIDE)
    assert python_blocks(BLOCKS_COPY.read_text(encoding="utf-8")) == python_blocks(SHARED_GUIDE.read_text(encoding="utf-8"))
