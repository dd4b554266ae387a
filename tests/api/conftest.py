"""A real `selfheal api` (uvicorn) on 127.0.0.1 in a subprocess, with its own SELFHEAL_HOME and config,
plus a loopback fake vision model (OpenAI-compatible) that the config names for ``lmstudio``.

The server is module-scoped (one start per test module); tests reach its database with explicit
URLs and run storage writes with SELFHEAL_HOME pointed at its home (the audit key lives there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests.conftest import subprocess_env

VISION_ANSWER = {"status": "healthy", "confidence": 0.9, "findings": [], "summary": "a regular code image"}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class FakeVision:
    url: str
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)



def _fake_vision() -> tuple[ThreadingHTTPServer, FakeVision]:
    seen: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            seen.append(("GET", self.path))
            self._send({"data": [{"id": "llava-test"}]})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            seen.append(("POST", self.path))
            self._send({"choices": [{"message": {"role": "assistant", "content": json.dumps(VISION_ANSWER)}}]})

        def _send(self, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, FakeVision(f"http://127.0.0.1:{server.server_address[1]}/v1", seen)


@dataclass
class ApiServer:
    base: str
    home: Path
    db_url: str
    env: dict[str, str]
    vision: FakeVision
    tokens: dict[str, str]
    log: Path
    target: Path

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=60, **kwargs)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "healing", *args], env=self.env, capture_output=True, text=True,
                              timeout=120)


def api_config(home: Path, vision_url: str, target: Path) -> dict[str, Any]:
    return {
        "vision_model": {"provider": "lmstudio", "endpoint": vision_url, "model": "llava-test", "timeout": 10,
                         "max_retries": 0, "upload_allowlist": ["statistical", "lmstudio"]},
        "dashboard": {"max_upload_mb": 2, "max_upload_pixels": 1024 * 1024},
        "pixelrts": {"max_metadata_bytes": 4096},
        "api": {"max_batch_files": 3, "max_json_kb": 64},
        "database": {"busy_timeout_ms": 300},
        "tuning": {"target_config": str(target)},
    }


def start_server(home: Path, config: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str, dict[str, str], Path]:
    home.mkdir(parents=True, exist_ok=True)
    config_path = home / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = subprocess_env(SELFHEAL_HOME=str(home), SELFHEAL_CONFIG=str(config_path))
    for var in ("SELFHEAL_DATABASE_URL", "SELFHEAL_MODE", "VLM_MODEL_PROVIDER", "VLM_MODEL_ENDPOINT"):
        env.pop(var, None)
    port = free_port()
    log = home / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "healing", "api", "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base, env, log
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the API never answered /health:\n" + log.read_text())


def stop_server(proc: subprocess.Popen[bytes]) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _create_tokens(home: Path, config: Path) -> dict[str, str]:
    """The tokens every test uses, written in-process into the server's database (its audit key too)."""
    from healing.api.tokens import create_token, revoke_token
    from storage.engine import dispose_engines, session_scope

    saved = {k: os.environ.get(k) for k in ("SELFHEAL_HOME", "SELFHEAL_CONFIG")}
    os.environ["SELFHEAL_HOME"], os.environ["SELFHEAL_CONFIG"] = str(home), str(config)
    dispose_engines()
    try:
        tokens = {}
        with session_scope() as session:
            for name, role in (("ops", "operator"), ("watcher", "viewer"), ("gone", "operator")):
                tokens[name] = create_token(session, name, role, actor="test")[0]
            revoke_token(session, "gone", actor="test")
        return tokens
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        dispose_engines()


@pytest.fixture(scope="session")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One server for the whole run of tests/api (started once: ~5 s)."""
    home = tmp_path_factory.mktemp("api-home")
    vision_server, vision = _fake_vision()
    target = home / "vllm-target.yaml"
    target.write_text("gpu-memory-utilization: 0.8\n")
    proc, base, env, log = start_server(home, api_config(home, vision.url, target))
    try:
        tokens = _create_tokens(home, home / "config.yaml")
        yield ApiServer(base, home, f"sqlite:///{home / 'selfheal.db'}", env, vision, tokens, log, target)
    finally:
        stop_server(proc)
        vision_server.shutdown()


@pytest.fixture
def server_home(api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> ApiServer:
    """In-process storage writes go to the server's database and audit key."""
    from storage.engine import dispose_engines

    monkeypatch.setenv("SELFHEAL_HOME", str(api.home))
    monkeypatch.setenv("SELFHEAL_CONFIG", str(api.home / "config.yaml"))
    dispose_engines()
    return api


def make_image(path: Path, size: int = 200_000, seed: int = 1) -> Path:
    """A PixelRTS image of ``size`` bytes of text-like data (deterministic)."""
    from healing.pixelrts import encode

    rng = np.random.default_rng(seed)
    data = rng.integers(32, 127, size=size, dtype=np.uint8).tobytes()
    path.write_bytes(encode(data).png)  # no sidecar: the upload is the PNG alone
    return path


def one_line_error(response: httpx.Response, status: int) -> str:
    """The error text of a {"success": false, "error": "..."} answer with ``status`` (asserted)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"success", "error"} and body["success"] is False, body
    assert "\n" not in body["error"] and body["error"].strip() == body["error"] and body["error"]
    return body["error"]


def rgba_png(width: int, height: int) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", np.zeros((height, width, 4), dtype=np.uint8))
    assert ok
    return data.tobytes()
