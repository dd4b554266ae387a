"""Bearer tokens (none, unknown, wrong role, revoked), body/file/pixel limits and one-line errors."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import ApiServer, make_image, one_line_error, rgba_png

MISSING = "missing bearer token: send 'Authorization: Bearer TOKEN' (selfheal api token create NAME --role viewer|operator)"


def test_every_endpoint_but_health_and_metrics_needs_a_token(api: ApiServer) -> None:
    client = api.client()
    paths = [path for path, item in client.get("/openapi.json").json()["paths"].items() if "get" in item]
    assert paths == ["/health", "/api/v1/models", "/api/v1/images", "/api/v1/images/{image_id}", "/api/v1/requests/{request_id}",
                     "/api/v1/nodes", "/api/v1/promotions", "/api/v1/promotions/{promotion_id}", "/api/v1/tuning/status",
                     "/api/v1/tuning/rate-limits", "/api/v1/audit", "/api/v1/audit/export", "/api/v1/audit/verify", "/metrics"]
    for path in paths:
        if "{" in path:
            path = path.replace("{image_id}", "1").replace("{request_id}", "1").replace("{promotion_id}", "1")
        response = client.get(path)
        if path in ("/health", "/metrics"):
            assert response.status_code == 200, path
            continue
        assert one_line_error(response, 401) == MISSING, path
        assert response.headers["www-authenticate"] == "Bearer"


def test_unknown_malformed_and_revoked_tokens_are_refused(api: ApiServer) -> None:
    for token in ("shk_" + "A" * 43, "not-even-a-token", api.tokens["ops"][:-1]):
        assert one_line_error(api.client(token).get("/api/v1/images"), 401) == "invalid or revoked token"
    assert one_line_error(api.client(api.tokens["gone"]).get("/api/v1/images"), 401) == "invalid or revoked token"
    response = api.client().get("/api/v1/images", headers={"Authorization": "Basic b3BzOnB3"})
    assert one_line_error(response, 401) == MISSING


@pytest.mark.slow  # two CLI subprocesses
def test_a_token_revoked_while_in_use_is_refused_from_the_next_request(api: ApiServer) -> None:
    created = api.cli("api", "token", "create", "shortlived", "--role", "viewer")
    token = created.stdout.strip()
    assert api.client(token).get("/api/v1/images").status_code == 200
    assert api.cli("api", "token", "revoke", "shortlived").returncode == 0
    assert one_line_error(api.client(token).get("/api/v1/images"), 401) == "invalid or revoked token"


def test_a_viewer_may_read_but_not_write(api: ApiServer) -> None:
    viewer = api.client(api.tokens["watcher"])
    assert viewer.get("/api/v1/images").status_code == 200
    for path, body in (("/api/v1/images", {"path": "/nonexistent.rts.png"}), ("/api/v1/images/1/check", None),
                       ("/api/v1/images/1/heal", None), ("/api/v1/images/1/accept-change", None),
                       ("/api/v1/promotions/1/approve", None), ("/api/v1/promotions/1/reject", None),
                       ("/api/v1/promotions/1/rollback", None)):
        error = one_line_error(viewer.post(path, json=body), 403)
        assert error == "token 'watcher' has role viewer; this needs operator", path


def test_tokens_never_appear_in_the_server_log_or_the_database(api: ApiServer) -> None:
    import sqlite3

    api.client(api.tokens["ops"]).get("/api/v1/images")
    api.client(api.tokens["ops"] + "x").get("/api/v1/images")
    log = api.log.read_text()
    db = (api.home / "selfheal.db").read_bytes() + b"".join(p.read_bytes() for p in api.home.glob("selfheal.db-*"))
    for token in api.tokens.values():
        assert token not in log and token.encode() not in db
    with sqlite3.connect(api.home / "selfheal.db") as db:
        rows = dict(db.execute("SELECT name, token_sha256 FROM api_tokens").fetchall())
    assert {"ops", "watcher", "gone"} <= set(rows)
    assert rows["ops"] == hashlib.sha256(api.tokens["ops"].encode()).hexdigest()


def _raw_request(api: ApiServer, head: bytes, body_chunks: Iterator[bytes] | None = None) -> tuple[bytes, float]:
    """Send a hand-made request; return the raw answer and how long it took to arrive."""
    host, port = api.base.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        for chunk in body_chunks or ():
            try:
                sock.sendall(chunk)
            except OSError:
                break
        answer = b""
        while True:
            try:
                part = sock.recv(65536)
            except OSError:
                break
            if not part:
                break
            answer += part
    return answer, time.monotonic() - started


def test_a_declared_huge_body_is_refused_413_before_any_of_it_is_sent(api: ApiServer) -> None:
    head = (b"POST /api/v1/health-check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + api.tokens["watcher"].encode() +
            b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 10737418240\r\n\r\n")
    answer, took = _raw_request(api, head)  # not one byte of the 10 GiB body is sent
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b'{"success": false, "error": "the request body is 10240.0 MiB; /api/v1/health-check accepts at '
                           b'most 2.1 MiB (dashboard.max_upload_mb: 2 MiB)"}')
    assert took < 5


def test_an_anonymous_upload_is_refused_401_before_its_body_is_read(api: ApiServer) -> None:
    head = (b"POST /api/v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1048576\r\n\r\n")  # within the limit, but nothing of it is sent
    answer, took = _raw_request(api, head)
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert b"www-authenticate: Bearer" in answer.lower().replace(b"bearer", b"Bearer")
    assert answer.endswith(b'{"success":false,"error":"' + MISSING.encode() + b'"}')
    assert took < 5


def test_a_chunked_body_is_cut_off_at_the_limit(api: ApiServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(64):  # 4 MiB, twice the limit
            yield b"\0" * 65536

    client = api.client(api.tokens["watcher"])
    response = client.post("/api/v1/health-check", content=chunks(),
                           headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert one_line_error(response, 413) == ("the request body exceeds 2.1 MiB, the most /api/v1/health-check accepts "
                                             "(dashboard.max_upload_mb: 2 MiB)")


def test_a_json_body_over_its_limit_is_refused(api: ApiServer) -> None:
    client = api.client(api.tokens["ops"])
    response = client.post("/api/v1/images", json={"path": "x" * (70 * 1024)})
    assert one_line_error(response, 413) == ("the request body is 70 KiB; /api/v1/images accepts at most 64 KiB "
                                             "(api.max_json_kb: 64 KiB)")


def test_a_file_over_the_upload_limit_is_refused(api: ApiServer) -> None:
    data = rgba_png(8, 8) + b"\0" * (2 * 1024 * 1024)  # 2 MiB + a few bytes: within the body slack, over the file limit
    response = api.client(api.tokens["watcher"]).post("/api/v1/health-check", files={"file": ("big.png", data)})
    assert one_line_error(response, 413) == "file big.png exceeds 2 MiB (dashboard.max_upload_mb)"


@pytest.mark.parametrize("path", ["/api/v1/health-check", "/api/v1/analyze"])
def test_an_image_with_too_many_pixels_is_refused_before_decoding(api: ApiServer, path: str) -> None:
    data = rgba_png(2048, 1024)  # 2 Mpx, declared in the header; the file itself is small
    response = api.client(api.tokens["watcher"]).post(path, files={"file": ("wide.png", data)})
    assert one_line_error(response, 413) == ("wide.png: the image is 2048×1024 pixels; uploads are limited to 1048576 "
                                             "pixels (dashboard.max_upload_pixels)")


def test_metadata_over_the_configured_limit_is_a_structural_finding(api: ApiServer, tmp_path: Path) -> None:
    import struct
    import zlib

    png = make_image(tmp_path / "k.rts.png").read_bytes()
    text = b"Comment\0" + b"x" * 8192  # over pixelrts.max_metadata_bytes (4096)
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    data = png[:33] + chunk + png[33:]  # right after IHDR
    body = api.client(api.tokens["watcher"]).post("/api/v1/health-check", files={"file": ("m.rts.png", data)}).json()
    assert body["success"] is True and body["status"] in ("critical", "unknown")
    assert any("4096" in f["description"] for f in body["findings"]), body["findings"]


def test_framework_errors_are_one_line_json(api: ApiServer) -> None:
    client = api.client(api.tokens["ops"])
    assert one_line_error(client.get("/api/v1/nothing-here"), 404) == "not found: no such endpoint (see /docs)"
    assert one_line_error(client.delete("/api/v1/images"), 405) == "Method Not Allowed"
    assert one_line_error(client.get("/api/v1/images", params={"limit": 0}), 422) == \
        "limit: Input should be greater than or equal to 1"
    assert one_line_error(client.get("/api/v1/images", params={"limit": 5000}), 400) == \
        "limit must be ≤ 1000 (api.max_page_size), got 5000"
    assert one_line_error(client.get("/api/v1/images/abc"), 422) == "image_id: Input should be a valid integer, unable to parse string as an integer"
    assert one_line_error(client.post("/api/v1/images", content=b"{not json", headers={"Content-Type": "application/json"}),
                          422) == "the request body is not valid JSON (Expecting property name enclosed in double quotes)"
    assert one_line_error(client.get("/api/v1/images/999999"), 404) == "image 999999 is not registered"


def test_openapi_and_docs_are_served(api: ApiServer) -> None:
    client = api.client()
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "selfheal API"
    for path in ("/health", "/api/v1/models", "/api/v1/analyze", "/api/v1/batch", "/api/v1/health-check", "/metrics",
                 "/api/v1/images", "/api/v1/promotions/{promotion_id}/rollback", "/api/v1/tune/observe", "/api/v1/audit/export"):
        assert path in spec["paths"], path
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer",
        "description": "a token from `selfheal api token create NAME --role viewer|operator`"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text


def test_httpx_default_client_sees_json_errors_for_unknown_methods(api: ApiServer) -> None:
    response = httpx.request("PATCH", f"{api.base}/health")
    assert one_line_error(response, 405) == "Method Not Allowed"


def test_a_used_token_gets_its_last_used_time(server_home: ApiServer) -> None:
    import sqlite3

    from healing.api.tokens import create_token
    from storage.engine import session_scope

    api = server_home
    with session_scope() as session:
        token, row = create_token(session, "fresh", "viewer", actor="test")
    assert row["last_used_at"] is None

    def last_used() -> str | None:
        with sqlite3.connect(api.home / "selfheal.db") as db:
            return db.execute("SELECT last_used_at FROM api_tokens WHERE name = 'fresh'").fetchone()[0]

    assert last_used() is None
    assert api.client(token).get("/api/v1/models").status_code == 200
    deadline = time.monotonic() + 5
    while last_used() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert last_used() is not None
