"""The OpenAI wire format: request bodies -> checked parameters, results -> response objects.

No HTTP here (``app.py`` does the HTTP): every check raises ``APIError`` with the status, the
OpenAI error type, the offending parameter and a message that says what to send instead.
Unknown fields are ignored (clients send extras); fields that would change the result but are not
supported here (``n`` > 1, ``echo``, ``suffix``, ``logit_bias``) are refused rather than ignored.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from edgemoe.runtime.sampling import SamplingConfig

MAX_STOP = 16            # stop strings per request (OpenAI allows 4; llama.cpp any number)
MAX_TOP_LOGPROBS = 20    # OpenAI's limit for chat


class APIError(Exception):
    """An error the client gets as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None,
                 **extra):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code, **self.extra}}


def bad(param: str, message: str, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Params:
    """What a completion request asks for, checked."""
    max_tokens: int | None           # None: up to the end of the context
    sampling: SamplingConfig
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    logprobs: int | None             # None: off; n >= 0: the sampled token's logprob and top n
    model: str | None
    ignore_eos: bool = False         # llama.cpp's and vLLM's extension: generate past EOS


def _number(body: dict, key: str, default, lo=None, hi=None, integer=False):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise bad(key, f"{key} must be {'an integer' if integer else 'a number'}, got {v!r}", "invalid_type")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        span = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise bad(key, f"{key} must be {span}, got {v}")
    return v


def _flag(body: dict, key: str, default: bool = False) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(key, f"{key} must be true or false, got {v!r}", "invalid_type")
    return v


def parse_params(body: dict, chat: bool) -> Params:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    n = _number(body, "n", 1, lo=1, integer=True)
    if n != 1:
        raise bad("n", f"n={n}: this server returns one choice per request; send n=1 (or omit it) "
                       f"and make several requests")
    if body.get("echo"):
        raise bad("echo", "echo is not supported; omit it", "unsupported_parameter")
    if body.get("suffix"):
        raise bad("suffix", "suffix (insertion) is not supported; omit it", "unsupported_parameter")
    if body.get("logit_bias"):
        raise bad("logit_bias", "logit_bias is not supported; omit it", "unsupported_parameter")
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, None, lo=1, integer=True)
    temperature = _number(body, "temperature", 1.0, lo=0, hi=2)
    seed = _number(body, "seed", None, integer=True)
    sampling = SamplingConfig(
        greedy=temperature == 0, temperature=temperature or 1.0,
        top_p=_number(body, "top_p", 1.0, lo=0, hi=1) or 1e-9,
        top_k=_number(body, "top_k", 0, lo=0, integer=True),
        min_p=_number(body, "min_p", 0.0, lo=0, hi=1),
        presence_penalty=_number(body, "presence_penalty", 0.0, lo=-2, hi=2),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, lo=-2, hi=2),
        seed=seed)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad("stop", "stop must be a string or a list of strings", "invalid_type")
    if len(stop) > MAX_STOP:
        raise bad("stop", f"at most {MAX_STOP} stop strings, got {len(stop)}")
    stream = _flag(body, "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise bad("stream_options", "stream_options must be an object", "invalid_type")
    if opts and not stream:
        raise bad("stream_options", "stream_options is only allowed with stream: true")
    if chat:
        logprobs = _flag(body, "logprobs")
        top = _number(body, "top_logprobs", None, lo=0, hi=MAX_TOP_LOGPROBS, integer=True)
        if top is not None and not logprobs:
            raise bad("top_logprobs", "top_logprobs needs logprobs: true")
        lp = (top or 0) if logprobs else None
    else:
        lp = _number(body, "logprobs", None, lo=0, hi=MAX_TOP_LOGPROBS, integer=True)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model", "model must be a string", "invalid_type")
    return Params(max_tokens, sampling, tuple(stop), stream, bool(opts.get("include_usage")), lp, model,
                  _flag(body, "ignore_eos"))


def completion_prompt(body: dict):
    """/v1/completions' prompt: text, or token ids (a list of ints, or a one-element list)."""
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, str):
        if not p:
            raise bad("prompt", "prompt is empty; send some text")
        return p
    if isinstance(p, list) and p and all(isinstance(i, int) and not isinstance(i, bool) for i in p):
        return p
    if isinstance(p, list) and len(p) > 1:
        raise bad("prompt", "one prompt per request: send a string (or a list of token ids), "
                            "not a list of prompts")
    raise bad("prompt", "prompt must be a non-empty string or a list of token ids",
              "invalid_type" if p is not None else "missing_required_parameter")


# ---- responses ----

def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


class TokenText:
    """Token id -> the text and UTF-8 bytes it stands for alone (for logprobs), memoised."""

    def __init__(self, decode):
        self.decode, self._memo = decode, {}

    def __call__(self, tid: int) -> tuple[str, list[int]]:
        v = self._memo.get(tid)
        if v is None:
            s = self.decode([tid])
            v = self._memo[tid] = (s, list(s.encode("utf-8")))
        return v


def chat_logprobs(tokens, token_text: TokenText) -> dict:
    """Chat's ``logprobs.content``: per token {token, logprob, bytes, top_logprobs}."""
    out = []
    for t in tokens:
        s, b = token_text(t.id)
        top = [{"token": token_text(i)[0], "logprob": lp, "bytes": token_text(i)[1]} for i, lp in t.top]
        out.append({"token": s, "logprob": t.logprob, "bytes": b, "top_logprobs": top})
    return {"content": out}


def completion_logprobs(tokens, token_text: TokenText, offset0: int = 0) -> dict:
    """Legacy completions' logprobs: parallel lists, and top alternatives as {token: logprob}."""
    toks, lps, tops, offs, off = [], [], [], [], offset0
    for t in tokens:
        s = token_text(t.id)[0]
        toks.append(s)
        lps.append(t.logprob)
        tops.append({token_text(i)[0]: lp for i, lp in t.top})
        offs.append(off)
        off += len(s)
    return {"tokens": toks, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs}


def now() -> int:
    return int(time.time())
