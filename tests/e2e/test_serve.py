"""`edgemoe serve` as a user runs it: a real server process on loopback, driven by the real
``openai`` client (and raw HTTP where the client would hide the wire format)."""
from __future__ import annotations

import http.client
import json
import time

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from serve_helpers import ServerProcess, request  # noqa: E402

KEY = "sk-test-edgemoe"
ORIGIN = "http://ui.example"


@pytest.fixture(scope="module")
def server(demo_package):
    s = ServerProcess(demo_package, "--parallel", 2, "--ctx-size", 256, "--level", 8,
                      "--api-key", KEY, "--cors-origins", ORIGIN, "--alias", "demo")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _auth():
    return {"Authorization": f"Bearer {KEY}"}


def test_models_and_health(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["demo"]
    assert client.models.retrieve("demo").id == "demo"
    assert request(server.url, "GET", "/health").json() == {"status": "ok"}     # public


def test_chat_non_streaming_has_usage(client):
    r = client.chat.completions.create(model="demo", max_tokens=12, temperature=0,
                                       messages=[{"role": "user", "content": "Who made the heavens?"}])
    c = r.choices[0]
    assert r.object == "chat.completion" and c.message.role == "assistant" and c.message.content
    assert c.finish_reason in ("length", "stop")
    assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_equals_non_streaming(client):
    msgs = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "In the beginning?"}]
    whole = client.chat.completions.create(model="demo", max_tokens=16, temperature=0, messages=msgs)
    chunks = list(client.chat.completions.create(model="demo", max_tokens=16, temperature=0,
                                                 messages=msgs, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_stream_and_not(client):
    r = client.completions.create(model="demo", prompt="In the beginning", max_tokens=10, temperature=0)
    assert r.object == "text_completion" and r.usage.prompt_tokens == 3
    parts = list(client.completions.create(model="demo", prompt="In the beginning", max_tokens=10,
                                           temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts) == r.choices[0].text
    ids = client.completions.create(model="demo", prompt=[367, 262, 1342], max_tokens=4, temperature=0)
    assert ids.usage.prompt_tokens == 3


def test_stop_strings_cut_the_text(client):
    free = client.completions.create(model="demo", prompt="And God said", max_tokens=24, temperature=0)
    text = free.choices[0].text
    word = text.split()[2]
    cut = client.completions.create(model="demo", prompt="And God said", max_tokens=24, temperature=0,
                                    stop=[word, "zzzz"])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[:text.index(word)]
    streamed = "".join(p.choices[0].text for p in client.completions.create(
        model="demo", prompt="And God said", max_tokens=24, temperature=0, stop=word, stream=True))
    assert streamed == cut.choices[0].text


def test_seed_reproduces_and_changes(client):
    run = lambda seed: client.completions.create(model="demo", prompt="The LORD", max_tokens=16,
                                                 temperature=1.0, seed=seed).choices[0].text
    a = run(11)
    assert run(11) == a
    assert any(run(s) != a for s in (12, 13, 14))


def test_logprobs_chat_and_completions(client):
    r = client.chat.completions.create(model="demo", max_tokens=5, temperature=0, logprobs=True,
                                       top_logprobs=3, messages=[{"role": "user", "content": "Hi"}])
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob)       # greedy: the best
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token
    c = client.completions.create(model="demo", prompt="In the beginning", max_tokens=4, temperature=0,
                                  logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == c.choices[0].text and lp.text_offset[0] == 0


def _err(resp):
    body = resp.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return body["error"]


def test_error_objects(server, client):
    url = "/v1/chat/completions"
    r = request(server.url, "POST", url, raw=b"{not json", headers=_auth())
    assert r.status_code == 400 and _err(r)["code"] == "invalid_json"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="demo", prompt="word " * 400, max_tokens=8)
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["n_ctx"] == 256
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo", temperature=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo", n=2, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo", messages=[{"role": "pirate", "content": "x"}])
    assert "role" in e.value.body["message"]
    r = request(server.url, "POST", url, {"model": "demo", "messages": [{"role": "user", "content": "x"}],
                                          "max_tokens": "ten"}, headers=_auth())
    assert r.status_code == 400 and _err(r)["param"] == "max_tokens"
    r = request(server.url, "GET", "/v1/nothing", headers=_auth())
    assert r.status_code == 404 and _err(r)["type"] == "not_found_error"


def test_api_key_wrong_or_missing(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = request(server.url, "POST", "/v1/completions", {"prompt": "x"})
    assert r.status_code == 401 and _err(r)["type"] == "authentication_error"
    assert request(server.url, "GET", "/metrics").status_code == 401


def test_cors_only_for_the_given_origin(server):
    ok = request(server.url, "OPTIONS", "/v1/chat/completions",
                 headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    other = request(server.url, "GET", "/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_tokenize_round_trip(server, demo_package):
    from tokenizers import Tokenizer

    ids = request(server.url, "POST", "/tokenize", {"content": "In the beginning"}, _auth()).json()
    tok = Tokenizer.from_file(str(demo_package / "tokenizer.json"))
    assert ids["tokens"] == tok.encode("In the beginning").ids
    text = request(server.url, "POST", "/detokenize", {"tokens": ids["tokens"]}, _auth()).json()
    assert text["content"] == "In the beginning"
    r = request(server.url, "POST", "/detokenize", {"tokens": [10**9]}, _auth())
    assert r.status_code == 400


def test_disconnect_mid_stream_frees_the_slot(server):
    before = server.metrics(_auth())
    body = {"model": "demo", "prompt": "In the beginning", "max_tokens": 200, "stream": True,
            "temperature": 0}
    host, port = server.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps(body),
                 headers={**_auth(), "Content-Type": "application/json"})
    r = conn.getresponse()
    got = [r.fp.readline() for _ in range(6)]
    conn.sock.close()                   # the client goes away mid-stream
    conn.close()
    assert any(line.startswith(b"data: {") for line in got)
    deadline, m = time.time() + 20, None
    while time.time() < deadline:
        m = server.metrics(_auth())
        if m['edgemoe:requests_total{status="cancelled"}'] > before['edgemoe:requests_total{status="cancelled"}']:
            break
        time.sleep(0.1)
    assert m['edgemoe:requests_total{status="cancelled"}'] == before['edgemoe:requests_total{status="cancelled"}'] + 1
    assert m["llamacpp:requests_processing"] == 0 and m["edgemoe:kv_reserved_bytes"] == 0
    assert m["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"] < 200


def test_multi_turn_chat_reuses_the_prefix(client):
    msgs = [{"role": "user", "content": "Who is the LORD?"}]
    r1 = client.chat.completions.create(model="demo", max_tokens=8, temperature=0, messages=msgs)
    msgs += [{"role": "assistant", "content": r1.choices[0].message.content},
             {"role": "user", "content": "And then?"}]
    r2 = client.chat.completions.create(model="demo", max_tokens=8, temperature=0, messages=msgs)
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens


def test_metrics_text(server):
    m = server.metrics(_auth())
    for name in ("llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total",
                 "llamacpp:requests_deferred", "edgemoe:time_to_first_token_seconds_count",
                 "edgemoe:kv_pool_bytes", "edgemoe:flash_bytes_read_total",
                 "edgemoe:process_peak_resident_bytes"):
        assert name in m, name
    assert m["edgemoe:kv_pool_bytes"] > 0 and m["edgemoe:time_to_first_token_seconds_count"] >= 1
