"""Guide snippet "VisionAnalyzer": summary, overlay, edges, Fourier, clusters as dicts, and a vision model.

With a model configured (``VLM_MODEL_PROVIDER``/``VLM_MODEL_ENDPOINT`` → the loopback fake) the
snippet prints the model's answer and its findings by category; without one, its own ``except``
prints why the model is not available.
"""

from __future__ import annotations

import json

from healing.analysis import PixelRTSVisionAnalyzer
from tests.guide.conftest import LMSTUDIO_ANSWER


def _analysis_lines(guide_dir) -> list[str]:
    analyzer = PixelRTSVisionAnalyzer(guide_dir.cwd / "kernel.rts.png")
    edges = analyzer.detect_edges(method="sobel")
    fourier = analyzer.analyze_fourier()
    clusters = analyzer.detect_clusters(eps=5.0, min_samples=10, feature_type="position")
    return ["Dimensions: 512x512", "Total pixels: 262,144", "Channels: 4", "Entropy overlay: output/kernel_entropy.png",
            f"Edges: {edges['edge_count']}", f"Density: {edges['edge_density']:.2%}",
            f"Periodic patterns: {fourier['has_periodic_patterns']}",
            f"Dominant frequency: {fourier['dominant_frequency']}",
            f"Clusters: {clusters['num_clusters']}", f"Regions of interest: {len(clusters['regions_of_interest'])}"]


def test_with_a_vision_model(guide_dir, fake_models) -> None:
    proc = guide_dir.run("vision_analyzer", extra_env={"VLM_MODEL_PROVIDER": "lmstudio",
                                                       "VLM_MODEL_ENDPOINT": f"{fake_models.url}/v1"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:10] == _analysis_lines(guide_dir)
    assert (guide_dir.cwd / "output" / "kernel_entropy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(lines[10]) == LMSTUDIO_ANSWER  # the model's answer text, as the snippet prints it
    assert lines[11:] == [
        "corruption: [{'severity': 'medium', 'description': 'stripe of uniform pixels', 'region': [0, 0, 16, 8]}]",
        "anomaly: []", "structural: []", "security: []", "performance: []",
    ]
    # LM Studio's loaded model is discovered first, then asked with the picture and the overlay.
    assert fake_models.paths() == [("GET", f"127.0.0.1:{fake_models.url.rsplit(':', 1)[1]}", "/v1/models"),
                                   ("POST", f"127.0.0.1:{fake_models.url.rsplit(':', 1)[1]}", "/v1/chat/completions")]
    ask = fake_models.requests[1].body
    assert ask["model"] == "llava-phi-3"
    images = [p for p in ask["messages"][1]["content"] if p["type"] == "image_url"]
    assert len(images) == 2 and all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in images)


def test_without_a_vision_model_the_snippet_says_why(guide_dir) -> None:
    proc = guide_dir.run("vision_analyzer")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:10] == _analysis_lines(guide_dir)
    assert lines[10:] == ["Vision model not available: no vision model configured (vision_model.provider is "
                          "statistical): set VLM_MODEL_PROVIDER and VLM_MODEL_ENDPOINT, or pass model= and endpoint="]


def test_an_unreachable_model_is_reported_in_one_line(guide_dir, fake_models) -> None:
    proc = guide_dir.run("vision_analyzer", extra_env={"VLM_MODEL_PROVIDER": "ollama",
                                                       "VLM_MODEL_ENDPOINT": f"{fake_models.url}/missing"})
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.splitlines()[-1]
    assert last.startswith(f"Vision model not available: vision model ollama not available at {fake_models.url}/missing: ")
    assert "404" in last
