"""While the model loads, the server answers 503 "Loading model" (as llama-server), /health too."""
from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("starlette")

from edgemoe.runtime.chat_template import ChatTemplate  # noqa: E402
from edgemoe.serve.app import ServerState, build_app  # noqa: E402


def _call(app, method: str, path: str, body: bytes = b""):
    """One request through the ASGI app -> (status, JSON body)."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": [(b"content-type", b"application/json")],
             "scheme": "http", "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 1),
             "http_version": "1.1", "asgi": {"version": "3.0", "spec_version": "2.3"}}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(data)


def test_everything_is_503_until_the_model_is_attached():
    state = ServerState(ChatTemplate(None), "m", api_key="k")
    app = build_app(state)
    for method, path in (("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/completions")):
        status, body = _call(app, method, path, b'{"prompt": "x"}')
        assert status == 503 and body["error"]["type"] == "unavailable_error", path
        assert body["error"]["message"] == "Loading model"
    assert not state.ready
