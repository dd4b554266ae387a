"""Running the guide's snippets as real subprocesses, and a loopback fake of the vision-model APIs.

Each snippet runs with ``python -c`` in a fresh temporary directory holding ``kernel.rts.png`` and
``system.rts.png`` (the names the guide uses), with its own ``SELFHEAL_HOME``. The fake model server
is a real HTTP server on 127.0.0.1 that answers the OpenAI-compatible API (``GET /v1/models``,
``POST /v1/chat/completions``) and the Anthropic Messages API (``POST /v1/messages``); it also
accepts proxy-form requests (``GET http://localhost:1234/v1/models``), so a snippet that names
``http://localhost:1234/v1`` itself reaches it through ``HTTP_PROXY`` without binding port 1234.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from tests.guide.manifest import SNIPPETS, runnable

ROOT = Path(__file__).resolve().parents[2]
KERNEL_BYTES = 300_000  # a 512x512 grid: large enough that the guide's max_size=256 really downscales
SYSTEM_BYTES = 20_000

# What the fake model answers, per API; a JSON object as the prompt asks for.
LMSTUDIO_ANSWER = {"status": "warning", "confidence": 0.8, "summary": "one stripe breaks the texture",
                   "findings": [{"category": "corruption", "severity": "medium",
                                 "description": "stripe of uniform pixels", "region": [0, 0, 16, 8]}]}
OPENAI_ANSWER = {"status": "healthy", "confidence": 0.9, "summary": "consistent texture", "findings": []}
ANTHROPIC_ANSWER = {"status": "healthy", "confidence": 0.7, "summary": "nothing unusual", "findings": []}


def image_bytes(size: int, seed: int) -> bytes:
    """Half text, half noise: a picture with structure (edges, clusters, two entropy bands)."""
    words = b"the kernel boots, the services start, the image heals itself when it must "
    text = (words * (size // len(words) + 1))[: size // 2]
    noise = np.random.default_rng(seed).integers(0, 256, size - len(text), dtype=np.uint8).tobytes()
    return text + noise


@dataclass
class Seen:
    method: str
    url: str  # the absolute URL (proxy form) or the path
    host: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeModels:
    url: str
    requests: list[Seen] = field(default_factory=list)

    def paths(self) -> list[tuple[str, str, str]]:
        return [(r.method, r.host, urlsplit(r.url).path) for r in self.requests]


@pytest.fixture
def fake_models() -> Iterator[FakeModels]:
    seen: list[Seen] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            host = parts.netloc or self.headers.get("host", "")
            with lock:
                seen.append(Seen(self.command, self.path, host, {k.lower(): v for k, v in self.headers.items()},
                                 json.loads(raw) if raw else None))
            path = parts.path
            if not path.startswith("/v1/"):
                self.send_error(404)
                return
            if self.command == "GET" and path.endswith("/models"):
                body: Any = {"object": "list", "data": [{"id": "llava-phi-3", "object": "model"}]}
            elif self.command == "POST" and path.endswith("/chat/completions"):
                # A local server (LM Studio) is asked without a key; OpenAI with one.
                answer = OPENAI_ANSWER if self.headers.get("authorization") else LMSTUDIO_ANSWER
                body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": json.dumps(answer)}}]}
            elif self.command == "POST" and path.endswith("/v1/messages"):
                body = {"content": [{"type": "text", "text": json.dumps(ANTHROPIC_ANSWER)}]}
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeModels(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class GuideDir:
    cwd: Path
    home: Path
    env: dict[str, str]

    def run(self, name: str, *, extra_env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run snippet ``name`` (import lines rewritten) with ``python -c`` in this directory."""
        return subprocess.run([sys.executable, "-c", runnable(SNIPPETS[name])], cwd=self.cwd, capture_output=True,
                              text=True, timeout=timeout, env={**self.env, **(extra_env or {})})

    def popen(self, name: str, *, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", runnable(SNIPPETS[name])], cwd=self.cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**self.env, **(extra_env or {})})


@pytest.fixture
def guide_dir(tmp_path: Path) -> GuideDir:
    from healing.pixelrts import write_image

    cwd = tmp_path / "work"
    cwd.mkdir()
    write_image(image_bytes(KERNEL_BYTES, 1), cwd / "kernel.rts.png", sidecar=False, metadata={"name": "kernel"})
    write_image(image_bytes(SYSTEM_BYTES, 2), cwd / "system.rts.png", sidecar=False, metadata={"name": "system"})
    home = tmp_path / "home"
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "HOME")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(SELFHEAL_HOME=str(home), PYTHONPATH=str(ROOT), SELFHEAL_DATABASE_URL=f"sqlite:///{home / 'selfheal.db'}")
    return GuideDir(cwd, home, env)
