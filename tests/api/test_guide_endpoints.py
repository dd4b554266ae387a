"""The image guide's REST examples against a real `selfheal api`: same fields, values from the same code."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from healing.api.guide import version
from tests.api.conftest import ApiServer, make_image, one_line_error, rgba_png


def test_health_answers_without_a_token_in_the_guide_shape(api: ApiServer) -> None:
    # curl http://localhost:8000/health
    response = api.client().get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "healthy", "version": version(),
                               "dependencies": {"pixelrts": "installed", "vision_model": "lmstudio", "database": "ok"}}


def test_models_lists_the_guide_methods_and_parameters(api: ApiServer) -> None:
    # curl http://localhost:8000/api/v1/models
    body = api.client(api.tokens["watcher"]).get("/api/v1/models").json()
    assert body["success"] is True
    assert body["models"]["edge_detection"] == {"methods": ["sobel", "canny"], "parameters": {
        "sobel": ["threshold"], "canny": ["low_threshold", "high_threshold"]}}
    assert body["models"]["fourier_analysis"] == {"parameters": ["max_frequencies"]}
    assert body["models"]["clustering"] == {"parameters": ["eps", "min_samples", "feature_type"]}
    assert body["vision_models"] == {"configured": "lmstudio", "allowed": ["statistical", "lmstudio"]}


def test_analyze_with_edges_and_overlay_as_in_the_guide(api: ApiServer, tmp_path: Path) -> None:
    from healing.analysis.engine import analyze_image
    from healing.analysis.loading import load_image

    image = make_image(tmp_path / "kernel.rts.png")
    # curl -X POST .../api/v1/analyze -F file=@kernel.rts.png -F 'methods=["edges"]' -F edge_method=sobel -F return_overlay=true
    with image.open("rb") as fh:
        response = api.client(api.tokens["watcher"]).post(
            "/api/v1/analyze", files={"file": ("kernel.rts.png", fh, "image/png")},
            data={"methods": '["edges"]', "edge_method": "sobel", "return_overlay": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["file"] == "kernel.rts.png"
    assert list(body["analysis"]) == ["edges"]
    edges = body["analysis"]["edges"]
    expected = analyze_image(load_image(image), ("edges",), edge_method="sobel")["edges"]
    assert edges["method"] == "sobel"
    assert (edges["edge_count"], edges["edge_density"], edges["strong_edges_count"]) == (
        expected["edge_count"], expected["edge_density"], expected["strong_edges_count"])
    assert edges["overlay"].startswith("data:image/png;base64,")
    png = base64.b64decode(edges["overlay"].split(",", 1)[1])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert body["image"] == {"width": 256, "height": 256, "grid_size": 256, "pixelrts": True, "analysis_size": [256, 256]}


def test_analyze_without_overlay_gives_every_method_and_no_pictures(api: ApiServer, tmp_path: Path) -> None:
    image = make_image(tmp_path / "kernel.rts.png")
    response = api.client(api.tokens["watcher"]).post("/api/v1/analyze", files={"file": ("kernel.rts.png", image.read_bytes())})
    analysis = response.json()["analysis"]
    assert list(analysis) == ["entropy", "edges", "fourier", "clusters"]
    assert not any("overlay" in section for section in analysis.values())


def test_batch_analyses_each_file_and_reports_a_bad_one_as_an_item(api: ApiServer, tmp_path: Path) -> None:
    kernel = make_image(tmp_path / "kernel.rts.png", seed=1)
    system = make_image(tmp_path / "system.rts.png", seed=2)
    # curl -X POST .../api/v1/batch -F files=@kernel.rts.png -F files=@system.rts.png -F 'methods=["edges", "fourier"]' -F edge_method=canny
    files = [("files", ("kernel.rts.png", kernel.read_bytes())), ("files", ("system.rts.png", system.read_bytes())),
             ("files", ("notes.txt", b"not an image"))]
    response = api.client(api.tokens["watcher"]).post("/api/v1/batch", files=files,
                                                       data={"methods": '["edges", "fourier"]', "edge_method": "canny"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert [(r["file"], r["status"]) for r in body["results"]] == [
        ("kernel.rts.png", "success"), ("system.rts.png", "success"), ("notes.txt", "error")]
    assert sorted(body["results"][0]["analysis"]) == ["edges", "fourier"]
    assert body["results"][0]["analysis"]["edges"]["method"] == "canny"
    assert body["results"][2]["error"] == "not a PNG file (PixelRTS images are PNGs: .rts.png)"


def test_batch_refuses_more_files_than_configured(api: ApiServer) -> None:
    files = [("files", (f"f{i}.png", rgba_png(8, 8))) for i in range(4)]
    error = one_line_error(api.client(api.tokens["watcher"]).post("/api/v1/batch", files=files), 413)
    assert error == "4 files in one batch; the limit is 3 (api.max_batch_files)"


def test_health_check_with_the_configured_vision_model_as_in_the_guide(api: ApiServer, tmp_path: Path) -> None:
    image = make_image(tmp_path / "kernel.rts.png")
    before = len(api.vision.requests)
    # curl -X POST .../api/v1/health-check -F file=@kernel.rts.png -F model=lmstudio -F endpoint=http://localhost:1234/v1
    response = api.client(api.tokens["watcher"]).post(
        "/api/v1/health-check", files={"file": ("kernel.rts.png", image.read_bytes())},
        data={"model": "lmstudio", "endpoint": api.vision.url})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["file"] == "kernel.rts.png" and body["models"] == ["lmstudio"]
    assert body["status"] == "healthy" and body["findings"] == []
    assert {"mean_entropy", "anomaly_score"} <= set(body["metrics"])
    assert body["metrics"]["hash_verified"] is True
    assert ("POST", "/v1/chat/completions") in api.vision.requests[before:]


def test_health_check_defaults_to_the_statistical_model_and_agrees_with_the_checker(api: ApiServer, tmp_path: Path) -> None:
    from healing.analysis.health import VLMHealthChecker

    image = make_image(tmp_path / "kernel.rts.png")
    before = len(api.vision.requests)
    body = api.client(api.tokens["watcher"]).post("/api/v1/health-check",
                                                  files={"file": ("kernel.rts.png", image.read_bytes())}).json()
    expected = VLMHealthChecker(models="statistical").check_health(image).to_dict()
    assert body["models"] == ["statistical"]
    assert (body["status"], body["confidence"], body["recommendation"]) == (
        expected["status"], expected["confidence"], expected["recommendation"])
    assert body["metrics"]["mean_entropy"] == expected["metrics"]["mean_entropy"]
    assert len(api.vision.requests) == before  # nothing was sent to a model


def test_health_check_of_a_damaged_image_is_critical_not_an_error(api: ApiServer, tmp_path: Path) -> None:
    data = bytearray(make_image(tmp_path / "kernel.rts.png").read_bytes())
    data[-40] ^= 0xFF  # inside the last IDAT chunk: CRC error
    body = api.client(api.tokens["watcher"]).post("/api/v1/health-check", files={"file": ("bad.rts.png", bytes(data))}).json()
    assert body["success"] is True and body["status"] == "critical"
    assert body["findings"][0]["category"] == "structural"
    assert "selfheal-api-" not in str(body)  # the temporary path never reaches the client


def test_health_check_sends_nothing_to_a_url_that_is_not_configured(api: ApiServer, tmp_path: Path) -> None:
    image = make_image(tmp_path / "kernel.rts.png").read_bytes()
    client = api.client(api.tokens["watcher"])
    before = len(api.vision.requests)
    error = one_line_error(client.post("/api/v1/health-check", files={"file": ("k.rts.png", image)},
                                       data={"model": "lmstudio", "endpoint": "http://169.254.169.254/v1"}), 400)
    assert error == (f"endpoint http://169.254.169.254/v1 is not an allowed model URL for lmstudio "
                     f"(allowed: {api.vision.url}; api.allowed_endpoints)")
    error = one_line_error(client.post("/api/v1/health-check", files={"file": ("k.rts.png", image)},
                                       data={"model": "openai"}), 400)
    assert error == "vision model 'openai' is not allowed for uploads (allowed: statistical, lmstudio)"
    error = one_line_error(client.post("/api/v1/health-check", files={"file": ("k.rts.png", image)},
                                       data={"model": "http://evil.example/v1"}), 400)
    assert error == "uploads may name a vision model, not a URL"
    assert len(api.vision.requests) == before


def test_analyze_errors_are_one_line(api: ApiServer) -> None:
    client = api.client(api.tokens["watcher"])
    png = rgba_png(16, 16)
    assert one_line_error(client.post("/api/v1/analyze", files={"file": ("a.png", png)}, data={"methods": '["edgez"]'}),
                          400) == "unknown analysis method 'edgez' (choose from entropy, edges, fourier, clusters, all)"
    assert one_line_error(client.post("/api/v1/analyze", files={"file": ("a.png", png)}, data={"methods": "[1"}),
                          400) == 'methods must be a JSON list such as ["edges", "fourier"]'
    assert one_line_error(client.post("/api/v1/analyze", files={"file": ("a.png", png)}, data={"edge_method": "prewitt"}),
                          400) == "edge_method must be sobel or canny, got 'prewitt'"
    assert one_line_error(client.post("/api/v1/analyze", data={"methods": '["edges"]'}), 422) == "file: Field required"
    assert one_line_error(client.post("/api/v1/analyze", files={"file": ("a.png", b"")}), 400) == "file a.png is empty"
    truncated = make_png_truncated()
    error = one_line_error(client.post("/api/v1/analyze", files={"file": ("t.png", truncated)}), 422)
    assert error.startswith("t.png: damaged image: ")


def make_png_truncated() -> bytes:
    data = rgba_png(64, 64)
    return data[: len(data) - 20]


def test_analyze_takes_the_parameters_models_lists(api: ApiServer, tmp_path: Path) -> None:
    from healing.analysis.edges import canny_edges, sobel_edges
    from healing.analysis.fourier import analyze_fourier
    from healing.analysis.imaging import downscale
    from healing.analysis.loading import load_image

    image = make_image(tmp_path / "kernel.rts.png")
    small, scale = downscale(load_image(image).pixels, 1024)
    client = api.client(api.tokens["watcher"])

    def analysis(**fields: str) -> dict:
        response = client.post("/api/v1/analyze", files={"file": ("k.rts.png", image.read_bytes())}, data=fields)
        assert response.status_code == 200, response.text
        return response.json()["analysis"]

    sobel = analysis(methods='["edges"]', threshold="100")["edges"]
    assert (sobel["threshold"], sobel["edge_count"]) == (100.0, sobel_edges(small, 100.0, scale=scale).edge_count)
    canny = analysis(methods='["edges"]', edge_method="canny", low_threshold="10", high_threshold="20")["edges"]
    assert (canny["low_threshold"], canny["high_threshold"]) == (10.0, 20.0)
    assert canny["edge_count"] == canny_edges(small, 10, 20, scale=scale).edge_count != \
        canny_edges(small, scale=scale).edge_count
    fourier = analysis(methods='["fourier"]', max_frequencies="3")["fourier"]
    assert fourier == json.loads(json.dumps(analyze_fourier(small, 3, scale=scale).to_dict()))
    clusters = analysis(methods='["clusters"]', feature_type="color", eps="7.5", min_samples="4")["clusters"]
    assert list(clusters) == ["color"] and (clusters["color"]["eps"], clusters["color"]["min_samples"]) == (7.5, 4)
    entropy = analysis(methods='["entropy"]', block_size="1024")["entropy"]
    assert entropy["block_size"] == 1024


def test_analyze_parameter_errors_are_one_line(api: ApiServer) -> None:
    client = api.client(api.tokens["watcher"])
    png = rgba_png(16, 16)

    def error(status: int, **fields: str) -> str:
        return one_line_error(client.post("/api/v1/analyze", files={"file": ("a.png", png)}, data=fields), status)

    assert error(400, edge_method="canny", low_threshold="200", high_threshold="100") == \
        "low_threshold (200) must not exceed high_threshold (100)"
    assert error(400, block_size="1026") == "block_size must be a multiple of 4 bytes (one pixel), got 1026"
    assert error(422, block_size="32") == "block_size: Input should be greater than or equal to 64"
    assert error(422, feature_type="texture") == "feature_type: Input should be 'position' or 'color'"
    assert error(422, max_frequencies="0") == "max_frequencies: Input should be greater than or equal to 1"
