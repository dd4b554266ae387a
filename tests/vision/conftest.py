"""A real HTTP model server on 127.0.0.1 that speaks both APIs, and shared contexts for the tests.

Each test scripts the answers (status, headers, body, delay) in order; the server records every
request (method, path, lower-cased headers, decoded JSON body) so tests can check its shape.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from healing.config import Settings, load_settings
from healing.vision import AnalysisContext

API_KEY = "sk-test-SECRET-0123456789abcdef"


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list → JSON, str/bytes → sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class ModelServer:
    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                with server._lock:
                    server.requests.append(Recorded(self.command, self.path,
                                                    {k.lower(): v for k, v in self.headers.items()}, body))
                    reply = server.replies.popleft() if server.replies else Reply(500, {"error": "no scripted reply"})
                if reply.delay:
                    time.sleep(reply.delay)
                payload = reply.body
                if isinstance(payload, dict | list):
                    data = json.dumps(payload).encode()
                elif isinstance(payload, str):
                    data = payload.encode()
                else:
                    data = payload or b""
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

            do_GET = _handle
            do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def reply(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Any:
    srv = ModelServer()
    srv.thread.start()
    yield srv
    srv.stop()


def openai_reply(text: str, **kw: Any) -> Reply:
    return Reply(body={"id": "x", "object": "chat.completion",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}, **kw)


def anthropic_reply(text: str, **kw: Any) -> Reply:
    return Reply(body={"id": "msg", "type": "message", "role": "assistant",
                       "content": [{"type": "text", "text": text}]}, **kw)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(env={"SELFHEAL_HOME": str(tmp_path)})


def settings_from_yaml(tmp_path: Path, text: str, **env: str) -> Settings:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, env={"SELFHEAL_HOME": str(tmp_path), **env})


def small_context(**metrics: Any) -> AnalysisContext:
    """A 4×4 PixelRTS grid (the PIXELRTS_V2.md test-vector size) with a 4×4 overlay."""
    pixels = np.arange(64, dtype=np.uint8).reshape(4, 4, 4)
    return AnalysisContext(
        image_path="small.rts.png", pixels=pixels, grid_size=4,
        overlay=np.full((4, 4, 3), 200, np.uint8),
        metadata={"format": "PixelRTS-2.0", "grid_size": 4, "name": "small", "data_size": 20,
                  "original_data_b64": "QUFBQUFB" * 50, "data_hash": "ab" * 32},
        metrics={"anomaly_score": 0.2, "mean_entropy": 3.5, "hash_verified": None, **metrics},
    )


def large_context() -> AnalysisContext:
    """A 64×64 grid of noise, so that max_size=32 forces a downscale."""
    rng = np.random.default_rng(7)
    return AnalysisContext(
        image_path="large.rts.png", pixels=rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), grid_size=64,
        overlay=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        metadata={"format": "PixelRTS-2.0", "grid_size": 64, "description": "d" * 500,
                  "original_data_b64": "SECRETPAYLOAD" * 100},
        metrics={"anomaly_score": 0.5, "mean_entropy": 7.99},
    )
