"""The guide's Python snippets and the one thing each test changes: its import line(s).

``GUIDE`` is read at test time and every ```python block is extracted in order; ``SNIPPETS`` names
each block by its index, says which lines are rewritten (old line → new line, matched exactly) and
which lines are added before it when the guide's block imports nothing (``prelude``). Every other
line runs exactly as the guide prints it. ``epilogue`` lines run after the snippet to print values the
test asserts (the snippet itself prints nothing about them). A block that cannot run is listed in
``EXCLUDED`` with the reason, and a test checks that reason still holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

SHARED_GUIDE = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "vlm_self_healing_os_guide.md"
# The guide sits beside the project in the team's checkout, not in CI's clean clone: there the copy of its
# code blocks (tests/guide/guide_blocks.md, checked against the guide whenever both exist) stands in.
BLOCKS_COPY = Path(__file__).resolve().with_name("guide_blocks.md")
GUIDE = SHARED_GUIDE if SHARED_GUIDE.is_file() else BLOCKS_COPY

CHECKER = "from systems.pixel_compiler.vlm_health_checker import"
DAEMON = "from systems.pixel_compiler.vlm_self_healing_daemon import VLMSelfHealingDaemon"
ANALYZER = "from systems.pixel_compiler.pixelrts_vision_analyzer import PixelRTSVisionAnalyzer"
DETECTOR = "from systems.pixel_compiler.pattern_detector import PatternDetector"


@dataclass(frozen=True)
class Snippet:
    index: int  # position among the guide's ```python blocks (0-based)
    title: str  # the guide's heading above it
    rewrites: dict[str, str] = field(default_factory=dict)
    prelude: tuple[str, ...] = ()
    epilogue: tuple[str, ...] = ()


SNIPPETS = {
    "health_checker": Snippet(0, "VLMHealthChecker", {
        f"{CHECKER} VLMHealthChecker": "from healing.analysis import VLMHealthChecker",
        f"{CHECKER} HealthCheckResult, HealthStatus": "from healing.analysis import HealthCheckResult, HealthStatus",
    }),
    "daemon": Snippet(1, "VLMSelfHealingDaemon", {DAEMON: "from healing.images import VLMSelfHealingDaemon"}),
    "vision_analyzer": Snippet(2, "VisionAnalyzer", {ANALYZER: "from healing.analysis import PixelRTSVisionAnalyzer"}),
    "pattern_detector": Snippet(3, "PatternDetector", {DETECTOR: "from healing.analysis import PatternDetector"}),
    "slow_checks": Snippet(4, "Issue: Slow health checks", prelude=("from healing.analysis import PixelRTSVisionAnalyzer",),
                           epilogue=("import base64", "print(img.shape, img.dtype, len(base64.b64decode(b64)) > 0)")),
    "batches": Snippet(5, "Issue: Memory exhaustion during batch processing",
                       {f"{CHECKER} VLMHealthChecker": "from healing.analysis import VLMHealthChecker"},
                       epilogue=("print([r.status.value for r in results])",
                                 "print(type(results[-1].metrics['mean_entropy']).__name__)")),
    "debug_mode": Snippet(6, "Debug Mode", prelude=("from healing.analysis import VLMHealthChecker",),
                          epilogue=("print(result.status.value, sorted(result.metrics['steps_ms']))",)),
    "custom_healing": Snippet(7, "Custom Healing Actions", {
        DAEMON: "from healing.images import VLMSelfHealingDaemon",
        f"{CHECKER} HealthStatus": "from healing.analysis import HealthStatus",
    }, epilogue=("print([a.__name__ for a in daemon.healing_actions], daemon.auto_heal, daemon.check_interval)",)),
    "ensemble": Snippet(9, "Multi-Model Ensemble", {
        f"{CHECKER} VLMHealthChecker": "import os\nfrom healing.analysis import VLMHealthChecker",
    }, epilogue=("print(result.status.value, result.metrics['providers'])",)),
}

EXCLUDED = {
    8: ("Integration with Evolution Daemon", "uses `await` outside a function and the evolution daemon "
        "(systems.neural_cortex.EvolutionProtocolServer), which is not part of selfheal"),
}
REFERENCE = {10: "HealthStatus Enum", 11: "HealthCheckResult"}  # class definitions: compared with ours


def python_blocks(text: str | None = None) -> list[str]:
    """Every ```python block of the guide, in order, without the fences (indented ones dedented)."""
    import textwrap

    text = GUIDE.read_text(encoding="utf-8") if text is None else text
    return [textwrap.dedent(m.group(2)) for m in re.finditer(r"^([ \t]*)```python\n(.*?)^\1```", text, re.S | re.M)]


def runnable(snippet: Snippet) -> str:
    """The snippet's source with its import lines rewritten; every other line unchanged."""
    source = python_blocks()[snippet.index]
    lines = source.splitlines()
    for old, new in snippet.rewrites.items():
        hits = [i for i, line in enumerate(lines) if line == old]
        assert len(hits) == 1, f"snippet {snippet.index} ({snippet.title}): {old!r} found {len(hits)} times"
        lines[hits[0]] = new
    return "\n".join([*snippet.prelude, *lines, *snippet.epilogue]) + "\n"
