"""Guide snippet "Multi-Model Ensemble": three models added with add_model, all asked, one vote each.

``lmstudio`` is named with the guide's own ``http://localhost:1234/v1``: the snippet's process reaches
the fake through ``HTTP_PROXY``. ``openai`` and ``anthropic`` get the test keys from the environment
the snippet reads (``os.getenv``) and the fake's URL from ``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL``.
The kernel image verifies (integrity decides: healthy, 0.99); the models vote healthy, healthy,
warning, so two of three agree with the ensemble's status.
"""

from __future__ import annotations

OPENAI_KEY = "sk-guide-test-openai"
ANTHROPIC_KEY = "sk-ant-guide-test"


def _env(fake_models) -> dict[str, str]:
    return {"HTTP_PROXY": fake_models.url, "http_proxy": fake_models.url, "OPENAI_API_KEY": OPENAI_KEY,
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY, "OPENAI_BASE_URL": f"{fake_models.url}/v1",
            "ANTHROPIC_BASE_URL": fake_models.url}


def test_every_added_model_answers_with_its_own_endpoint_and_key(guide_dir, fake_models) -> None:
    proc = guide_dir.run("ensemble", extra_env=_env(fake_models))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["Ensemble confidence: 99.00%", "Agreement: 66.67%",
                                        "healthy ['lmstudio', 'openai', 'anthropic']"]
    seen = sorted((method, host.split(":")[0], path) for method, host, path in fake_models.paths())
    assert seen == [("GET", "localhost", "/v1/models"), ("POST", "127.0.0.1", "/v1/chat/completions"),
                    ("POST", "127.0.0.1", "/v1/messages"), ("POST", "localhost", "/v1/chat/completions")]
    headers = {(host.split(":")[0], path): r.headers for (_, host, path), r in zip(fake_models.paths(), fake_models.requests,
                                                                                   strict=True)}
    assert headers["127.0.0.1", "/v1/chat/completions"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert headers["127.0.0.1", "/v1/messages"]["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in headers["localhost", "/v1/chat/completions"]


def test_without_keys_the_cloud_models_fail_and_do_not_vote(guide_dir, fake_models) -> None:
    env = _env(fake_models)
    del env["OPENAI_API_KEY"], env["ANTHROPIC_API_KEY"]
    proc = guide_dir.run("ensemble", extra_env=env)
    assert proc.returncode == 0, proc.stderr
    # Only LM Studio voted (warning): it agrees with nobody but itself, and integrity still decides.
    assert proc.stdout.splitlines() == ["Ensemble confidence: 99.00%", "Agreement: 100.00%",
                                        "healthy ['lmstudio', 'openai', 'anthropic']"]
    assert [r.host.split(":")[0] for r in fake_models.requests] == ["localhost", "localhost"]


def _plain_png(path):
    import cv2
    import numpy as np

    cv2.imwrite(str(path), np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return path


def test_add_model_weight_decides_a_weighted_ensemble(guide_dir, fake_models) -> None:
    """A plain PNG (no hash can decide): the models' weighted opinion is the status."""
    from healing.analysis import VLMHealthChecker
    from healing.config import load_settings

    image = _plain_png(guide_dir.cwd / "plain.png")
    settings = load_settings(env=guide_dir.env)

    def check(lmstudio_weight: float | None, aggregation: str) -> tuple[str, float, float]:
        checker = VLMHealthChecker(settings)
        checker.add_model("lmstudio", endpoint=f"{fake_models.url}/v1", weight=lmstudio_weight)
        checker.add_model("openai", endpoint=f"{fake_models.url}/v1", api_key=OPENAI_KEY, weight=1.0)
        result = checker.check_health_ensemble(image, models=["lmstudio", "openai"], aggregation=aggregation)
        return result.status.value, result.confidence, result.agreement

    # lmstudio says warning (0.8), openai healthy (0.9). Weighted 3:1 → warning 0.6 vs healthy 0.225.
    assert check(3.0, "weighted") == ("warning", 0.6, 0.5)
    # Equal weights → healthy 0.45 vs warning 0.4; averaging ignores weights altogether.
    assert check(1.0, "weighted") == ("healthy", 0.45, 0.5)
    assert check(3.0, "averaging") == ("healthy", 0.45, 0.5)
    # Weight 0: lmstudio does not vote; openai alone.
    assert check(0.0, "weighted") == ("healthy", 0.9, 1.0)
