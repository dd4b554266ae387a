"""Refusing an oversized request body before it is read (an ASGI middleware).

A declared ``Content-Length`` above the path's limit is answered 413 at once, without reading a
byte of the body. A body without one (chunked) is counted as it arrives; the moment it passes the
limit the read fails and the answer becomes 413, whatever the endpoint made of the failed read.
Per-file limits (``dashboard.max_upload_mb``) and pixel limits are checked by the endpoints.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]


class BodyTooLarge(Exception):
    pass


def _answer(status: int, message: str) -> tuple[Message, Message]:
    body = json.dumps({"success": False, "error": message}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"connection", b"close")]}
    return start, {"type": "http.response.body", "body": body}


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB" if n >= 1048576 else f"{n / 1024:.0f} KiB"


class BodyLimit:
    """Wraps an ASGI app; ``limit_for(method, path)`` gives the largest body accepted (bytes)."""

    def __init__(self, app: Any, limit_for: Callable[[str, str], tuple[int, str]]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit, what = self.limit_for(scope["method"], scope["path"])
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if declared is not None:
            text = declared.decode("latin-1").strip()
            if not text.isdigit():
                for message in _answer(400, "invalid Content-Length header"):
                    await send(message)
                return
            if int(text) > limit:
                for message in _answer(413, f"the request body is {_mib(int(text))}; {scope['path']} accepts at most {_mib(limit)} ({what})"):
                    await send(message)
                return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    for own in _answer(413, f"the request body exceeds {_mib(limit)}, the most {scope['path']} accepts ({what})"):
                        await send(own)
                return  # the endpoint's own answer to the failed read is replaced
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if not started:
                for message in _answer(413, f"the request body exceeds {_mib(limit)}, the most {scope['path']} accepts ({what})"):
                    await send(message)
