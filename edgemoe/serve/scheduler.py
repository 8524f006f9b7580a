"""Continuous batching for the server: one engine thread owns the runtime and its ``Batch``;
request handlers only submit and cancel, and receive their tokens through a callback.

Each loop: take cancellations (a client went away: its slot and KV are freed at once) -> admit
waiting requests in arrival order while a KV cache slot is free and the batch is under its cap
(head of line: a request that must wait holds back those behind it, so none starves) -> one engine
step over every running sequence -> text deltas, stop strings and finishes out to the handlers.

Admission is decided when a request is submitted, from figures fixed at start-up:
- its worst case, prompt + max_tokens, must fit the per-sequence context (``--ctx-size``) the
  budget reserved a KV cache for (``ContextTooLong``: 400; never admitted and aborted later);
- the queue is bounded (``QueueFull``: 503 with Retry-After).
Under a budget every slot's KV for a full context is inside the budget (``Runtime(max_batch=...)``),
so a slot is a reservation; and the batch is capped by the expert cache: B sequences touch
about E(1-(1-k/E)^B) distinct experts per layer, and the cap is the largest B whose layer working
set fits the cache at the planned level (beyond it every step would re-read experts it just
evicted).
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from edgemoe.errors import EdgeMoEError
from edgemoe.runtime.batch import Batch
from edgemoe.runtime.kv_cache import KVCache
from edgemoe.runtime.memory import rss_bytes
from edgemoe.runtime.sampling import SamplingConfig
from edgemoe.runtime.text_stream import TextStream


class ContextTooLong(EdgeMoEError):
    def __init__(self, message: str, n_prompt_tokens: int, n_ctx: int):
        super().__init__(message)
        self.n_prompt_tokens, self.n_ctx = n_prompt_tokens, n_ctx


class QueueFull(EdgeMoEError):
    """Every slot is busy and the queue holds ``--max-queue`` requests already."""


@dataclass
class Token:
    """One generated token as a handler sees it."""
    id: int
    text: str                       # the new text it completes (may be "" while held back)
    logprob: float | None = None
    top: list = field(default_factory=list)   # [(id, logprob)] best first


@dataclass
class Done:
    finish_reason: str              # "stop", "length", "cancelled", "error"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    text: str                       # the text held back until the end (a partial stop string)
    error: str | None = None


@dataclass
class Request:
    prompt: list[int]
    max_tokens: int
    sampling: SamplingConfig
    sink: Callable                  # called from the engine thread with Token / Done
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    stop_at_eos: bool = True
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    seq: int | None = None          # the batch's sequence id once admitted
    stream: TextStream | None = None


def distinct_experts(num_experts: int, top_k: int, rows: int) -> float:
    """Expected distinct experts a layer routes ``rows`` tokens to, routing near uniform."""
    return num_experts * (1 - (1 - top_k / num_experts) ** rows)


def expert_batch_cap(rt, parallel: int) -> int:
    """The largest batch (<= parallel) whose per-layer expert working set fits the expert cache at
    the budget's level (the lowest level with --level auto); ``parallel`` without a budget."""
    if rt.budgeted is None:
        return parallel
    a, layout = rt.arch, rt.pkg.layout
    per_expert = layout.prefix_length(rt.level or rt.pkg.quant.ladder[0])
    cap = 1
    for b in range(1, parallel + 1):
        if distinct_experts(a.num_experts, a.top_k, b) * per_expert <= rt.budget_plan.experts:
            cap = b
    return cap


class Metrics:
    """Counters the engine thread writes and /metrics reads (plain ints and floats)."""

    def __init__(self):
        self.requests = {"ok": 0, "cancelled": 0, "error": 0}
        self.rejected = {"queue_full": 0, "context": 0}
        self.prompt_tokens = 0
        self.prompt_tokens_cached = 0
        self.tokens_predicted = 0
        self.prompt_seconds = 0.0
        self.decode_seconds = 0.0
        self.steps = 0
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self.ttft_buckets = {b: 0 for b in (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)}

    def first_token(self, seconds: float):
        self.ttft_sum += seconds
        self.ttft_count += 1
        for b in self.ttft_buckets:
            if seconds <= b:
                self.ttft_buckets[b] += 1


class Scheduler:
    """Runs ``rt``: in the calling thread (``run``, as the server does: the thread that loaded the
    model, so its steps reuse the heap the warm-up measured) or in a thread of its own (``start``);
    ``submit`` / ``cancel`` / ``close`` from any thread."""

    def __init__(self, rt, ctx_size: int, max_queue: int = 64, decode: Callable | None = None):
        self.rt, self.ctx_size, self.max_queue = rt, int(ctx_size), int(max_queue)
        self.parallel = rt.max_batch
        self.cap = expert_batch_cap(rt, self.parallel)
        self.batch = Batch(rt)
        self.decode = decode or rt.decode
        self.metrics = Metrics()
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}       # by sequence id
        self._cancels: set[str] = set()
        self._cv = threading.Condition()
        self._stop = False
        self.kv_bytes_per_token = KVCache.bytes_per_token(rt.arch, rt.kv_dtype)
        self.baseline_bytes = 0     # the process's RSS before the server and the model (set by it)
        self._thread = None

    def start(self) -> "Scheduler":
        self._thread = threading.Thread(target=self.run, name="edgemoe-engine", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0):
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ---- called by handlers ----
    def check(self, n_prompt: int, max_tokens: int):
        """Raise ContextTooLong when a request can never fit."""
        if n_prompt + max_tokens > self.ctx_size:
            raise ContextTooLong(
                f"this request needs {n_prompt} prompt tokens + {max_tokens} max_tokens = "
                f"{n_prompt + max_tokens} tokens, more than the {self.ctx_size}-token context of a "
                f"sequence (--ctx-size); shorten the prompt or lower max_tokens", n_prompt, self.ctx_size)

    def submit(self, req: Request):
        try:
            self.check(len(req.prompt), req.max_tokens)
        except ContextTooLong:
            self.metrics.rejected["context"] += 1
            raise
        req.stream = TextStream(self.decode, req.stop)
        with self._cv:
            if len(self.waiting) >= self.max_queue and not self._admissible_now():
                self.metrics.rejected["queue_full"] += 1
                raise QueueFull(f"the server is busy: {len(self.running)} requests running and "
                                f"{len(self.waiting)} queued (--max-queue {self.max_queue}); retry later")
            self.waiting.append(req)
            self._cv.notify_all()

    def cancel(self, req_id: str):
        with self._cv:
            self._cancels.add(req_id)
            self._cv.notify_all()

    def _admissible_now(self) -> bool:
        return not self.waiting and len(self.running) < self.cap and self.batch.free_slots > 0

    # ---- figures for /metrics and /health ----
    def snapshot(self) -> dict:
        rt, b = self.rt, self.batch
        with self._cv:
            running = list(self.running.values())
            queued = len(self.waiting)
        s = {"requests_running": len(running), "requests_waiting": queued,
             "kv_slots": rt.kv.slots, "kv_slots_idle_prefix": len(b.idle),
             "batch_cap": self.cap,
             "kv_reserved_bytes": sum(len(r.prompt) + r.max_tokens  # <= ctx_size: submit checked
                                      for r in running) * self.kv_bytes_per_token,
             "kv_pool_bytes": rt.kv.slots * self.ctx_size * self.kv_bytes_per_token,
             "kv_tokens_held": int(rt.kv.lengths[:rt.kv.used].sum()),
             "expert_bytes_read": int(rt.store.bytes_read),
             "rss_bytes": rss_bytes(), "peak_rss_bytes": rss_bytes("VmHWM")}
        if rt.budgeted is not None:
            st = rt.budgeted.stats
            s.update(budget_bytes=rt.budget_plan.budget, expert_cache_bytes=rt.budgeted.cache.used,
                     expert_cache_capacity_bytes=rt.budgeted.cache.capacity,
                     expert_cache_hits=int(st["hits"]),
                     expert_cache_misses=int(st["expert_calls"] - st["hits"]))
        return s

    # ---- the engine thread ----
    def run(self):
        """The engine loop, until ``close``."""
        while True:
            with self._cv:
                while not self._stop and not self.waiting and not self.running and not self._cancels:
                    self._cv.wait(1.0)     # a timeout, so that Ctrl-C reaches the main thread
                if self._stop:
                    break
                cancels, self._cancels = self._cancels, set()
                for r in [r for r in self.waiting if r.id in cancels]:
                    self.waiting.remove(r)
                    self._retire(r, "cancelled")
                admitted = []
                while self.waiting and len(self.running) + len(admitted) < self.cap \
                        and self.batch.free_slots > len(admitted):
                    admitted.append(self.waiting.popleft())
            for r in [r for r in self.running.values() if r.id in cancels]:
                self.batch.cancel(r.seq)
                self._retire(r, "cancelled")
            for r in admitted:
                try:
                    r.seq = self.batch.add(r.prompt, r.max_tokens, r.sampling, stop_at_eos=r.stop_at_eos,
                                           logprobs=r.logprobs)
                except EdgeMoEError as e:
                    self._retire(r, "error", error=str(e))
                    continue
                self.running[r.seq] = r
                seq = self.batch.seqs[r.seq]
                self.metrics.prompt_tokens += len(r.prompt)
                self.metrics.prompt_tokens_cached += seq.reused
            if self.running:
                self._step()

    def _step(self):
        t0 = time.perf_counter()
        prefilling = any(s.prefilling for s in self.batch.seqs.values())
        try:
            out = self.batch.step()
        except Exception as e:      # noqa: BLE001  the server must outlive a failed step
            for r in list(self.running.values()):
                self.batch.cancel(r.seq)
                self._retire(r, "error", error=f"the engine failed: {e}")
            return
        dt = time.perf_counter() - t0
        self.metrics.steps += 1
        if prefilling:
            self.metrics.prompt_seconds += dt
        else:
            self.metrics.decode_seconds += dt
        now = time.perf_counter()
        for sid, tok in out:
            r = self.running.get(sid)
            if r is None:
                continue
            seq = self.batch.seqs.get(sid) or self.batch.finished.get(sid)
            self.metrics.tokens_predicted += 1
            if r.first_token is None:
                r.first_token = now
                self.metrics.first_token(now - r.submitted)
            eos = tok in self.rt.arch.eos_token_ids and seq.finish_reason == "stop"
            text = "" if eos else r.stream.push(tok)      # EOS is not text
            lp = seq.token_logprobs[-1] if seq.logprobs is not None else (None, [])
            r.sink(Token(tok, text, lp[0], lp[1]))
            if r.stream.stopped and sid in self.batch.seqs:
                self.batch.finish(sid, "stop")
            if sid in self.batch.finished:
                self._retire(r, self.batch.finished[sid].finish_reason)

    def _retire(self, r: Request, reason: str, error: str | None = None):
        """End a request (admitted or still waiting: then ``r.seq`` is None) and tell its sink."""
        self.running.pop(r.seq, None)
        seq = self.batch.finished.pop(r.seq, None)
        self.metrics.requests["ok" if reason in ("stop", "length") else reason] += 1
        n = len(seq.ids) if seq is not None else 0
        cached = seq.reused if seq is not None else 0
        tail = r.stream.flush() if reason in ("stop", "length") else ""
        r.sink(Done(reason, len(r.prompt), n, cached, tail, error))
