"""The HTTP routes (Starlette): OpenAI chat and text completions, models, health, metrics, and
llama.cpp-style tokenize / detokenize, over the engine thread of ``scheduler.py``.

Handlers run on the event loop and never touch the runtime: they check the request, render the
chat template, tokenize, and submit; the engine thread calls back with tokens, which reach the
handler through an asyncio queue. A client that goes away (mid-stream or while waiting for a
non-streamed reply) cancels its request at once, which frees its KV cache slot.
"""
from __future__ import annotations

import asyncio
import hmac
import json

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from edgemoe.errors import ConfigError, EdgeMoEError
from edgemoe.serve import protocol as P
from edgemoe.serve.metrics import render
from edgemoe.serve.scheduler import ContextTooLong, Done, QueueFull, Request as EngineRequest

MAX_BODY = 8 * 2**20        # bytes of a request body
PING_SECONDS = 15.0         # an SSE comment while nothing else is sent (keeps proxies from timing out)
RETRY_AFTER = "1"           # seconds a 503'd client is told to wait


class ServerState:
    """What the routes share: the model's names and template, and (once loaded) the scheduler."""

    def __init__(self, template, model_id: str, aliases=(), api_key: str | None = None,
                 created: int = 0):
        self.template = template
        self.model_id, self.names = model_id, {model_id, *aliases}
        self.api_key = api_key.encode() if api_key else None
        self.created = created
        self.scheduler = self.rt = self.token_text = None
        self.meta: dict = {}

    def attach(self, scheduler, meta: dict | None = None):
        """The model is loaded: requests are served from now on."""
        self.rt, self.meta = scheduler.rt, meta or {}
        self.token_text = P.TokenText(self.rt.decode)
        self.scheduler = scheduler          # last: ``ready`` turns true when everything is set

    @property
    def ready(self) -> bool:
        return self.scheduler is not None


LOADING = P.APIError(503, "Loading model", type="unavailable_error", code="model_loading",
                     headers={"Retry-After": RETRY_AFTER})


def _error(e: P.APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _api_error(e: Exception) -> P.APIError:
    if isinstance(e, P.APIError):
        return e
    if isinstance(e, QueueFull):
        return P.APIError(503, str(e), type="server_error", code="server_busy",
                          headers={"Retry-After": RETRY_AFTER})
    if isinstance(e, ConfigError):
        return P.APIError(400, str(e))
    return P.APIError(500, f"internal error: {e}", type="server_error")


async def _json_body(request: Request) -> dict:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise P.APIError(413, f"the request body is {len(body):,} bytes; at most {MAX_BODY:,}",
                         code="request_too_large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise P.APIError(400, f"the request body is not valid JSON ({e}); send a JSON object with "
                              f"Content-Type: application/json", code="invalid_json") from None
    if not isinstance(data, dict):
        raise P.APIError(400, "the request body must be a JSON object", code="invalid_json")
    return data


def _check_model(state: ServerState, params: P.Params):
    if params.model is not None and params.model not in state.names:
        raise P.APIError(404, f"the model {params.model!r} does not exist here; this server serves "
                              f"{', '.join(sorted(state.names))} (GET /v1/models)",
                         param="model", code="model_not_found")


def _encode_prompt(state: ServerState, prompt) -> list[int]:
    if isinstance(prompt, list):
        v = state.rt.arch.vocab_size
        if any(not 0 <= i < v for i in prompt):
            raise P.bad("prompt", f"token ids must be in 0..{v - 1}")
        return prompt
    return state.rt.encode(prompt)


class _Stream:
    """The bridge from the engine thread to one handler: tokens and the end, in order."""

    def __init__(self, loop):
        self.loop, self.queue = loop, asyncio.Queue()

    def __call__(self, event):            # the engine thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:              # the loop closed (shutting down)
            pass


def _submit(state: ServerState, prompt_ids: list[int], params: P.Params) -> tuple[EngineRequest, _Stream]:
    sched = state.scheduler
    max_tokens = params.max_tokens
    if max_tokens is None:                # OpenAI: up to the model's context
        max_tokens = max(sched.ctx_size - len(prompt_ids), 1)
    sink = _Stream(asyncio.get_running_loop())
    req = EngineRequest(prompt_ids, max_tokens, params.sampling, sink, params.stop, params.logprobs,
                        stop_at_eos=not params.ignore_eos)
    sched.submit(req)
    return req, sink


async def _watch_disconnect(request: Request, sched, req_id: str):
    """Cancel the request when the client goes away while its reply is being computed."""
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            sched.cancel(req_id)
            return


async def _completion(request: Request, chat: bool):
    state: ServerState = request.app.state.server
    body = await _json_body(request)
    params = P.parse_params(body, chat)
    _check_model(state, params)
    if chat:
        msgs = body.get("messages")
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise P.bad("chat_template_kwargs", "chat_template_kwargs must be an object", "invalid_type")
        try:
            text = state.template.render(msgs, add_generation_prompt=True, tools=body.get("tools"), **kwargs)
        except ConfigError as e:
            raise P.bad("messages", str(e)) from None
        prompt_ids = state.rt.encode(text, add_bos=False)
    else:
        prompt_ids = _encode_prompt(state, P.completion_prompt(body))
    param = "messages" if chat else "prompt"
    if not prompt_ids:
        raise P.bad(param, "the prompt is empty after tokenizing")
    try:
        req, sink = _submit(state, prompt_ids, params)
    except ContextTooLong as e:
        raise P.APIError(400, str(e), param=param, code="context_length_exceeded",
                         n_prompt_tokens=e.n_prompt_tokens, n_ctx=e.n_ctx) from None
    kind = "chat.completion" if chat else "text_completion"
    rid = ("chatcmpl-" if chat else "cmpl-") + req.id
    head = {"id": rid, "object": kind, "created": P.now(), "model": params.model or state.model_id,
            "system_fingerprint": state.meta.get("fingerprint")}
    if params.stream:
        return StreamingResponse(_sse(state, req, sink, head, chat, params), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    watcher = asyncio.create_task(_watch_disconnect(request, state.scheduler, req.id))
    tokens, parts, done = [], [], None
    try:
        while done is None:
            ev = await sink.queue.get()
            if isinstance(ev, Done):
                done = ev
            else:
                tokens.append(ev)
                parts.append(ev.text)
    finally:
        watcher.cancel()
        if done is None:
            state.scheduler.cancel(req.id)
    if done.finish_reason in ("error", "cancelled"):
        raise P.APIError(500, done.error or "the request was cancelled", type="server_error")
    text = "".join(parts) + done.text
    lp = None
    if params.logprobs is not None:
        lp = (P.chat_logprobs(tokens, state.token_text) if chat
              else P.completion_logprobs(tokens, state.token_text))
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}} if chat
              else {"index": 0, "text": text})
    choice.update(logprobs=lp, finish_reason=done.finish_reason)
    return JSONResponse({**head, "choices": [choice],
                         "usage": P.usage(done.prompt_tokens, done.completion_tokens, done.cached_tokens)})


def _sse_data(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


async def _sse(state: ServerState, req, sink: _Stream, head: dict, chat: bool, params: P.Params):
    """The OpenAI chunk stream: role first (chat), a chunk per text delta, the finish chunk, the
    usage chunk when asked for, then ``data: [DONE]``. Cancelled if the client goes away."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    base = {**head, "object": kind}
    extra = {"usage": None} if params.include_usage else {}
    offset = 0

    def chunk(text: str | None, tokens=(), finish=None, role=False):
        nonlocal offset
        lp = None
        if params.logprobs is not None and tokens:
            lp = (P.chat_logprobs(tokens, state.token_text) if chat
                  else P.completion_logprobs(tokens, state.token_text, offset))
        if text:
            offset += len(text)
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            c = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
        else:
            c = {"index": 0, "text": text or "", "logprobs": lp, "finish_reason": finish}
        return _sse_data({**base, "choices": [c], **extra})

    finished = False
    try:
        if chat:
            yield chunk(None, role=True)
        while True:
            try:
                ev = await asyncio.wait_for(sink.queue.get(), PING_SECONDS)
            except asyncio.TimeoutError:
                yield b": ping\n\n"
                continue
            if isinstance(ev, Done):
                finished = True
                if ev.finish_reason in ("error", "cancelled"):
                    err = P.APIError(500, ev.error or "the request was cancelled", type="server_error")
                    yield _sse_data(err.body())
                    return
                if ev.text:
                    yield chunk(ev.text)
                yield chunk(None, finish=ev.finish_reason)
                if params.include_usage:
                    yield _sse_data({**base, "choices": [],
                                     "usage": P.usage(ev.prompt_tokens, ev.completion_tokens, ev.cached_tokens)})
                yield b"data: [DONE]\n\n"
                return
            if ev.text or params.logprobs is not None:
                yield chunk(ev.text, [ev])
    finally:
        if not finished:              # the client went away (or the server is stopping)
            state.scheduler.cancel(req.id)


async def chat_completions(request: Request):
    return await _completion(request, chat=True)


async def completions(request: Request):
    return await _completion(request, chat=False)


def _model_card(state: ServerState, name: str) -> dict:
    return {"id": name, "object": "model", "created": state.created, "owned_by": "edgemoe",
            "meta": state.meta}


async def models(request: Request):
    state: ServerState = request.app.state.server
    names = [state.model_id] + sorted(state.names - {state.model_id})
    return JSONResponse({"object": "list", "data": [_model_card(state, n) for n in names]})


async def model(request: Request):
    state: ServerState = request.app.state.server
    name = request.path_params["model"]
    if name not in state.names:
        raise P.APIError(404, f"the model {name!r} does not exist here; GET /v1/models lists them",
                         param="model", code="model_not_found")
    return JSONResponse(_model_card(state, name))


async def health(request: Request):
    if not request.app.state.server.ready:      # as llama-server: 503 until the model is in
        return _error(LOADING)
    return JSONResponse({"status": "ok"})


async def metrics(request: Request):
    return PlainTextResponse(render(request.app.state.server.scheduler),
                             media_type="text/plain; version=0.0.4")


async def tokenize(request: Request):
    state: ServerState = request.app.state.server
    body = await _json_body(request)
    content = body.get("content")
    if not isinstance(content, str):
        raise P.bad("content", "content must be a string", "invalid_type")
    add_special = body.get("add_special", False)
    if not isinstance(add_special, bool):
        raise P.bad("add_special", "add_special must be true or false", "invalid_type")
    # add_special: prepend BOS as the package's tokenizer does (special tokens in the text are
    # always parsed, as llama.cpp's parse_special)
    ids = state.rt.encode(content, add_bos=None if add_special else False)
    if body.get("with_pieces"):
        return JSONResponse({"tokens": [{"id": i, "piece": state.token_text(i)[0]} for i in ids]})
    return JSONResponse({"tokens": ids})


async def detokenize(request: Request):
    state: ServerState = request.app.state.server
    body = await _json_body(request)
    ids = body.get("tokens")
    v = state.rt.arch.vocab_size
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < v
                                            for i in ids):
        raise P.bad("tokens", f"tokens must be a list of token ids in 0..{v - 1}", "invalid_type")
    return JSONResponse({"content": state.rt.decode(ids)})


class _Guard:
    """ASGI middleware: the API key (constant-time compare; /health stays public) and OpenAI error
    objects for every failure, including Starlette's own 404 / 405."""

    PUBLIC = {"/health", "/v1/health"}

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = self.state
        if not state.ready and scope["path"] not in self.PUBLIC:
            return await _error(LOADING)(scope, receive, send)
        if state.api_key is not None and scope["path"] not in self.PUBLIC and scope["method"] != "OPTIONS":
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"")
            token = auth[7:].strip() if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
            if not hmac.compare_digest(token, state.api_key):
                e = P.APIError(401, "invalid or missing API key: send the header "
                                    "'Authorization: Bearer <key>' with the server's --api-key",
                               type="authentication_error", code="invalid_api_key")
                return await _error(e)(scope, receive, send)
        return await self.app(scope, receive, send)


async def _on_api_error(request, exc):
    return _error(_api_error(exc))


async def _on_http_error(request, exc: HTTPException):
    kinds = {404: ("not_found_error", f"no route {request.method} {request.url.path}; see GET /v1/models, "
                                      f"POST /v1/chat/completions, POST /v1/completions"),
             405: ("invalid_request_error", f"{request.method} is not allowed on {request.url.path}")}
    t, msg = kinds.get(exc.status_code, ("invalid_request_error", str(exc.detail)))
    return _error(P.APIError(exc.status_code, msg, type=t, headers=getattr(exc, "headers", None)))


def build_app(state: ServerState, cors_origins: list[str] | None = None) -> Starlette:
    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/v1/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
    ]
    middleware = []
    if cors_origins:      # outermost, so that refusals carry the CORS headers too
        from starlette.middleware.cors import CORSMiddleware
        middleware.append(Middleware(CORSMiddleware, allow_origins=cors_origins,
                                     allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"]))
    middleware.append(Middleware(_Guard, state=state))
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={P.APIError: _on_api_error, EdgeMoEError: _on_api_error,
                                        HTTPException: _on_http_error, Exception: _on_api_error})
    app.state.server = state
    return app
