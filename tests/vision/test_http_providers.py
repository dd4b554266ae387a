"""The HTTP providers against a real server on 127.0.0.1: request shapes, answers, failures, retries."""

from __future__ import annotations

import base64
import json
import logging
import socket
from datetime import UTC, datetime

import cv2
import httpx
import numpy as np
import pytest

from healing.vision import AnthropicProvider, OpenAICompatibleProvider
from healing.vision._http import parse_retry_after

from .conftest import API_KEY, Reply, anthropic_reply, large_context, openai_reply, small_context

ANSWER = json.dumps({
    "summary": "One corrupted block.",
    "confidence": 0.8,
    "findings": [{"category": "corruption", "severity": "high", "description": "noise", "region": [1, 1, 2, 2]}],
})


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def openai_provider(server, *, name="lmstudio", key=None, model="llava-test", sleeps=None, **kw):
    return OpenAICompatibleProvider(name, f"{server.url}/v1", model=model, api_key=key, timeout=kw.pop("timeout", 5.0),
                                    max_retries=kw.pop("max_retries", 2), sleep=sleeps if sleeps is not None else Sleeps(),
                                    **kw)


def anthropic_provider(server, *, key=API_KEY, sleeps=None, **kw):
    return AnthropicProvider("anthropic", server.url, model="claude-test", api_key=key, requires_key=True,
                             key_hint="set ANTHROPIC_API_KEY", timeout=5.0, max_retries=kw.pop("max_retries", 2),
                             sleep=sleeps if sleeps is not None else Sleeps(), **kw)


def decode_png(b64: str) -> np.ndarray:
    raw = base64.b64decode(b64, validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


# --------------------------------------------------------------------------- request shapes

def test_openai_request_shape_with_key_and_downscaled_images(server):
    server.reply(openai_reply(ANSWER))
    provider = openai_provider(server, name="openai", key=API_KEY, max_size=32)
    result = provider.analyze(large_context())
    assert result.ok, result.error
    (req,) = server.requests
    assert (req.method, req.path) == ("POST", "/v1/chat/completions")
    assert req.headers["authorization"] == f"Bearer {API_KEY}"
    assert req.headers["content-type"] == "application/json"
    body = req.body
    assert body["model"] == "llava-test" and body["temperature"] == 0 and body["max_tokens"] == 1024
    system, user = body["messages"]
    assert system["role"] == "system" and "JSON" in system["content"]
    kinds = [part["type"] for part in user["content"]]
    assert kinds == ["text", "image_url", "image_url"]
    for part in user["content"][1:]:
        url = part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        image = decode_png(url.split(",", 1)[1])
        assert image.shape[:2] == (32, 32)  # 64×64 fitted into max_size=32
    text = user["content"][0]["text"]
    assert "The full image is 64x64 pixels" in text and "scaled to 32x32" in text
    # metadata is whitelisted and truncated: the payload never leaves the machine
    raw = json.dumps(body)
    assert "original_data_b64" not in raw and "SECRETPAYLOAD" not in raw
    assert '"description":"' + "d" * 79 + "…" in text


def test_openai_request_without_key_has_no_authorization_and_discovers_the_model(server):
    server.reply(Reply(body={"object": "list", "data": [{"id": "llava-phi-3", "object": "model"}]}),
                 openai_reply(ANSWER))
    provider = openai_provider(server, model=None, discover_model=True)
    result = provider.analyze(small_context())
    assert result.ok and result.model == "llava-phi-3" and result.attempts == 2
    models_req, chat_req = server.requests
    assert (models_req.method, models_req.path) == ("GET", "/v1/models")
    assert "authorization" not in chat_req.headers
    assert chat_req.body["model"] == "llava-phi-3"
    image = decode_png(chat_req.body["messages"][1]["content"][1]["image_url"]["url"].split(",", 1)[1])
    assert image.shape == (4, 4, 3)  # never enlarged; RGB only


def test_anthropic_request_shape(server):
    server.reply(anthropic_reply(ANSWER))
    result = anthropic_provider(server, max_size=16).analyze(large_context())
    assert result.ok, result.error
    (req,) = server.requests
    assert (req.method, req.path) == ("POST", "/v1/messages")
    assert req.headers["x-api-key"] == API_KEY
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in req.headers
    body = req.body
    assert body["model"] == "claude-test" and body["max_tokens"] == 1024 and "JSON" in body["system"]
    (message,) = body["messages"]
    assert message["role"] == "user"
    assert [b["type"] for b in message["content"]] == ["image", "image", "text"]
    for block in message["content"][:2]:
        assert block["source"]["type"] == "base64" and block["source"]["media_type"] == "image/png"
        assert decode_png(block["source"]["data"]).shape[:2] == (16, 16)


def test_anthropic_endpoint_with_v1_suffix_is_normalised(server):
    server.reply(anthropic_reply(ANSWER))
    provider = AnthropicProvider("anthropic", f"{server.url}/v1/", model="m", api_key=API_KEY)
    assert provider.analyze(small_context()).ok
    assert server.requests[0].path == "/v1/messages"


# --------------------------------------------------------------------------- answers

def test_json_answer_becomes_findings_with_byte_ranges(server):
    server.reply(openai_reply(ANSWER))
    result = openai_provider(server).analyze(small_context())
    assert (result.ok, result.status, result.confidence, result.answer_format) == (True, "critical", 0.8, "json")
    assert result.summary == "One corrupted block."
    (finding,) = result.findings
    assert finding.to_dict() == {
        "category": "corruption", "severity": "high", "description": "noise",
        "byte_range": [8, 56], "region": [1, 1, 2, 2], "source": "lmstudio",
        "byte_ranges": [[8, 12], [28, 36], [52, 56]],
    }


def test_fenced_answer_via_anthropic(server):
    text = "Here you go:\n```json\n" + json.dumps({
        "summary": "ok", "confidence": 0.9,
        "findings": [{"category": "anomaly", "severity": "medium", "description": "odd", "region": [2, 0, 2, 1]}],
    }) + "\n```"
    server.reply(anthropic_reply(text))
    result = anthropic_provider(server).analyze(small_context())
    assert (result.status, result.confidence) == ("warning", 0.9)
    assert [(f.source, f.byte_ranges) for f in result.findings] == [("anthropic", ((56, 64),))]


def test_bullet_answer(server):
    server.reply(openai_reply("Anomalies:\n- minor stripe at [0, 3, 4, 1]\nCorruption: none\nConfidence: 0.6"))
    result = openai_provider(server).analyze(small_context())
    assert (result.ok, result.status, result.confidence, result.answer_format) == (True, "healthy", 0.6, "bullets")
    (finding,) = result.findings
    assert (finding.severity, finding.region, finding.byte_ranges) == ("low", (0, 3, 4, 1), ((20, 28), (36, 44)))


def test_empty_findings_are_healthy(server):
    server.reply(openai_reply('{"summary": "fine", "confidence": 0.95, "findings": []}'))
    result = openai_provider(server).analyze(small_context())
    assert (result.ok, result.status, result.confidence, result.findings) == (True, "healthy", 0.95, [])


def test_malformed_answer_is_a_failed_result(server):
    server.reply(openai_reply("As an AI I cannot see images."))
    result = openai_provider(server).analyze(small_context())
    assert not result.ok and result.status == "unknown"
    assert result.error == "lmstudio: answer could not be read (no JSON object and no findings list)"


def test_answer_without_choices_is_a_failed_result(server):
    server.reply(Reply(body={"unexpected": True}))
    result = openai_provider(server).analyze(small_context())
    assert result.error == f"lmstudio: answer from {server.url}/v1/chat/completions has no choices[0].message.content"


def test_plain_png_has_regions_but_no_byte_ranges(server):
    server.reply(openai_reply(ANSWER))
    context = small_context()
    context.pixels = np.zeros((3, 5, 3), np.uint8)  # not a PixelRTS grid
    context.grid_size = None
    (finding,) = openai_provider(server).analyze(context).findings
    assert (finding.region, finding.byte_range) == ((1, 1, 2, 2), None)


# --------------------------------------------------------------------------- failures and retries

def test_slow_answer_times_out_after_one_attempt(server):
    server.reply(openai_reply(ANSWER, delay=1.5))
    result = openai_provider(server, timeout=0.3).analyze(small_context())
    assert not result.ok and result.attempts == 1
    assert result.error == f"lmstudio: no answer from {server.url}/v1/chat/completions within 0.3 s (timeout)"
    assert len(server.requests) == 1


def test_429_with_retry_after_seconds_is_honoured(server):
    server.reply(Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "2"}), openai_reply(ANSWER))
    sleeps = Sleeps()
    result = openai_provider(server, sleeps=sleeps).analyze(small_context())
    assert result.ok and result.attempts == 2 and len(server.requests) == 2
    assert sleeps == [2.0]


def test_retry_after_http_date_and_cap(server):
    server.reply(Reply(503, "busy", {"Retry-After": "Mon, 23 Nov 2026 10:00:07 GMT"}),
                 Reply(429, "later", {"Retry-After": "3600"}),
                 openai_reply(ANSWER))
    sleeps = Sleeps()
    provider = openai_provider(server, sleeps=sleeps)
    provider.policy.now = lambda: datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
    result = provider.analyze(small_context())
    assert result.ok and result.attempts == 3
    assert sleeps == [7.0, 30.0]  # the date 7 s ahead; an hour is capped at max_wait


def test_500s_exhaust_the_retries_with_exact_attempts(server):
    server.reply(*[Reply(500, {"error": {"message": "model crashed"}}) for _ in range(5)])
    sleeps = Sleeps()
    result = openai_provider(server, max_retries=2, sleeps=sleeps).analyze(small_context())
    assert len(server.requests) == 3 and result.attempts == 3
    assert sleeps == [0.5, 1.0]  # exponential backoff without Retry-After
    assert result.error == f"lmstudio: HTTP 500 from {server.url}/v1/chat/completions after 3 attempts: model crashed"


def test_zero_retries_means_one_attempt(server):
    server.reply(Reply(503, "x"), openai_reply(ANSWER))
    result = openai_provider(server, max_retries=0).analyze(small_context())
    assert not result.ok and len(server.requests) == 1 and result.error.startswith("lmstudio: HTTP 503 from")


def test_client_errors_are_not_retried_and_the_echoed_key_is_redacted(server, caplog):
    caplog.set_level(logging.DEBUG)
    server.reply(Reply(401, {"error": {"message": f"Incorrect API key provided: {API_KEY}"}}))
    provider = openai_provider(server, name="openai", key=API_KEY)
    result = provider.analyze(small_context())
    assert len(server.requests) == 1
    assert result.error == f"openai: HTTP 401 from {server.url}/v1/chat/completions: Incorrect API key provided: ***"
    assert API_KEY not in caplog.text and API_KEY not in json.dumps(result.to_dict())


def test_endpoint_down_gives_the_guide_message():
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = OpenAICompatibleProvider("lmstudio", f"http://127.0.0.1:{port}/v1", model="m", sleep=Sleeps())
    result = provider.analyze(small_context())
    assert not result.ok and result.attempts == 1
    assert result.error == f"lmstudio: Vision model not available at http://127.0.0.1:{port}/v1 (connection failed)"


def test_missing_key_fails_without_a_request(server):
    result = anthropic_provider(server, key=None).analyze(small_context())
    assert result.error == "anthropic: no API key (set ANTHROPIC_API_KEY)" and server.requests == []


def test_unexpected_exceptions_become_failed_results():
    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"boom with {API_KEY}")

    client = httpx.Client(transport=httpx.MockTransport(broken))
    provider = OpenAICompatibleProvider("vllm", "http://model.invalid/v1", model="m", api_key=API_KEY, client=client)
    result = provider.analyze(small_context())
    assert result.error == "vllm: unexpected failure: RuntimeError: boom with ***"


def test_injected_client_is_used(server):
    server.reply(openai_reply(ANSWER))
    with httpx.Client(headers={"X-Trace": "t1"}) as client:
        result = openai_provider(server, client=client).analyze(small_context())
    assert result.ok and server.requests[0].headers["x-trace"] == "t1"


# --------------------------------------------------------------------------- secrets

def test_key_never_appears_in_repr_results_or_logs(server, caplog):
    caplog.set_level(logging.DEBUG)
    server.reply(openai_reply(ANSWER), anthropic_reply("garbage"), Reply(500, "x"), Reply(500, "x"), Reply(500, "x"))
    providers = [openai_provider(server, name="openai", key=API_KEY), anthropic_provider(server),
                 openai_provider(server, name="vllm", key=API_KEY)]
    texts = []
    for provider in providers:
        texts += [repr(provider), str(provider), json.dumps(provider.analyze(small_context()).to_dict())]
    assert "api_key=set" in texts[0]
    joined = "\n".join(texts) + caplog.text
    assert API_KEY not in joined
    assert "retry 1/2" in caplog.text  # the retries were logged, without the key


def test_retry_after_parser():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("1.5", now) == 1.5
    assert parse_retry_after("-4", now) == 0.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:10 GMT", now) == 10.0
    assert parse_retry_after("Wed, 31 Dec 2025 23:59:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None


@pytest.mark.parametrize("status", [502, 504])
def test_other_5xx_are_retried(server, status):
    server.reply(Reply(status, "x"), openai_reply(ANSWER))
    assert openai_provider(server).analyze(small_context()).attempts == 2
