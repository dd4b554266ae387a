"""Opt-in: ask a real model. Set VLM_LIVE_ENDPOINT (and optionally VLM_LIVE_PROVIDER, default lmstudio,
and VLM_LIVE_MODEL); API keys come from OPENAI_API_KEY / ANTHROPIC_API_KEY as usual."""

from __future__ import annotations

import os

import numpy as np
import pytest

from healing.config import load_settings
from healing.vision import AnalysisContext, build_providers

LIVE_ENDPOINT = os.environ.get("VLM_LIVE_ENDPOINT")

pytestmark = pytest.mark.skipif(not LIVE_ENDPOINT, reason="set VLM_LIVE_ENDPOINT to run against a live model")


@pytest.mark.timeout(300)
def test_live_model_answers_with_a_usable_result(tmp_path):
    provider_name = os.environ.get("VLM_LIVE_PROVIDER", "lmstudio")
    env = {"SELFHEAL_HOME": str(tmp_path), "VLM_MODEL_PROVIDER": provider_name}
    if os.environ.get("VLM_LIVE_MODEL"):
        env["VLM_MODEL_NAME"] = os.environ["VLM_LIVE_MODEL"]
    settings = load_settings(env=env)
    settings.vision_model.timeout = 240.0
    (provider,) = build_providers(provider_name, settings, endpoint=LIVE_ENDPOINT)

    # a 64×64 grid: zeros with one block of noise, the kind of damage the prompt describes
    rng = np.random.default_rng(1)
    pixels = np.zeros((64, 64, 4), np.uint8)
    pixels[16:32, 40:56] = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    context = AnalysisContext(image_path="live.rts.png", pixels=pixels, grid_size=64,
                              metadata={"format": "PixelRTS-2.0", "grid_size": 64},
                              metrics={"anomaly_score": 0.8, "mean_entropy": 0.5})
    result = provider.analyze(context)
    assert result.ok, result.error
    assert result.status in ("healthy", "warning", "critical")
    assert 0.0 <= result.confidence <= 1.0
    for finding in result.findings:
        assert finding.source == provider_name
        if finding.region is not None:
            x, y, w, h = finding.region
            assert 0 <= x < 64 and 0 <= y < 64 and x + w <= 64 and y + h <= 64
            assert finding.byte_range is not None and 0 <= finding.byte_range[0] < finding.byte_range[1] <= 4 * 64 * 64
