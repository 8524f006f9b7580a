"""The server's engine side without HTTP: prompt reuse in the batch, admission, the bounded queue,
cancellation, stop strings, and the batch cap from the expert cache (the built-in model)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from edgemoe.runtime.batch import Batch
from edgemoe.runtime.engine import Runtime
from edgemoe.runtime.sampling import SamplingConfig
from edgemoe.serve.scheduler import (ContextTooLong, Done, QueueFull, Request, Scheduler, Token,
                                     distinct_experts, expert_batch_cap)

GREEDY = SamplingConfig()


class Collect:
    """A request's sink: tokens and the end, with an event to wait on."""

    def __init__(self):
        self.tokens, self.done, self.ended = [], None, threading.Event()

    def __call__(self, ev):
        if isinstance(ev, Done):
            self.done = ev
            self.ended.set()
        else:
            assert isinstance(ev, Token)
            self.tokens.append(ev)

    @property
    def text(self):
        return "".join(t.text for t in self.tokens) + (self.done.text if self.done else "")


def _alone(rt, ids, n):
    b = Batch(rt, reuse_prefixes=False)
    sid = b.add(ids, n, GREEDY, stop_at_eos=False)
    b.run()
    return b.finished[sid]


def test_a_prompt_extending_a_finished_one_reuses_its_kv(demo_package):
    rt = Runtime(demo_package, kv_dtype="f32", max_batch=2, context=256)
    p1 = rt.encode("In the beginning God created")
    b = rt.batch()
    s1 = b.add(p1, 6, GREEDY, stop_at_eos=False)
    b.run()
    first = b.finished[s1]
    assert list(b.idle.values()) == [(p1 + first.ids)[:len(p1) + 5]]   # the last token was never fed
    p2 = p1 + first.ids + rt.encode(" and the earth")
    s2 = b.add(p2, 8, GREEDY, stop_at_eos=False)
    seq2 = b.seqs[s2]
    assert seq2.reused == len(p1) + 5 and seq2.fed == seq2.reused and not b.idle
    b.run()
    fresh = _alone(Runtime(demo_package, kv_dtype="f32", context=256), p2, 8)
    assert b.finished[s2].ids == fresh.ids


def test_idle_prefixes_give_way_when_slots_are_needed(demo_package):
    rt = Runtime(demo_package, max_batch=2, context=128)
    b = rt.batch()
    for text in ("And God said", "Blessed are the"):
        b.add(text, 3, GREEDY, stop_at_eos=False)
    b.run()
    assert len(b.idle) == 2 and b.free_slots == 2
    a = b.add("Unrelated words here", 3, GREEDY, stop_at_eos=False)
    c = b.add("Yet more other words", 3, GREEDY, stop_at_eos=False)
    assert not b.idle and {b.seqs[a].slot, b.seqs[c].slot} == {0, 1}
    assert b.seqs[a].reused == 0 == b.seqs[c].reused
    b.run()
    assert all(len(s.ids) == 3 for s in b.finished.values())


def _scheduler(rt, **kw):
    return Scheduler(rt, kw.pop("ctx_size", 128), **kw).start()


def test_requests_beyond_the_slots_wait_and_all_complete_as_alone(demo_package):
    rt = Runtime(demo_package, max_batch=2, context=128, level=8)
    ref = Runtime(demo_package, context=128, level=8)
    prompts = ["In the beginning", "The LORD is my shepherd", "And it came to pass",
               "Blessed is the man", "Now the serpent"]
    sched = _scheduler(rt)
    try:
        sinks = [Collect() for _ in prompts]
        for p, sink in zip(prompts, sinks):
            sched.submit(Request(rt.encode(p), 10, GREEDY, sink))
        for sink in sinks:
            assert sink.ended.wait(60)
        for p, sink in zip(prompts, sinks):
            alone = ref.generate(p, 10, GREEDY)
            assert [t.id for t in sink.tokens] == alone.ids
            assert sink.done.finish_reason in ("length", "stop")
            assert sink.done.completion_tokens == len(alone.ids)
        assert sched.metrics.requests["ok"] == len(prompts)
        assert sched.snapshot()["requests_running"] == 0
    finally:
        sched.close()


def test_context_and_queue_limits(demo_package):
    rt = Runtime(demo_package, max_batch=1, context=64)
    sched = Scheduler(rt, 64, max_queue=1)          # not started: nothing is admitted
    with pytest.raises(ContextTooLong, match="64-token context"):
        sched.submit(Request(list(range(3, 50)), 20, GREEDY, Collect()))
    sched.submit(Request([5, 6, 7], 4, GREEDY, Collect()))
    with pytest.raises(QueueFull, match="--max-queue 1"):
        sched.submit(Request([5, 6, 7], 4, GREEDY, Collect()))
    assert sched.metrics.rejected["queue_full"] == 1 and sched.metrics.rejected["context"] == 1


def test_cancel_frees_the_slot_for_the_next_request(demo_package):
    rt = Runtime(demo_package, max_batch=1, context=256)
    sched = _scheduler(rt, ctx_size=256)
    try:
        long, nxt = Collect(), Collect()
        r = Request(rt.encode("In the beginning"), 200, GREEDY, long)
        sched.submit(r)
        sched.submit(Request(rt.encode("Blessed"), 4, GREEDY, nxt))
        while len(long.tokens) < 3:
            long.ended.wait(0.01)
        sched.cancel(r.id)
        assert long.ended.wait(30) and long.done.finish_reason == "cancelled"
        assert nxt.ended.wait(30) and nxt.done.finish_reason in ("length", "stop")
        assert len(long.tokens) < 200
        assert sched.metrics.requests["cancelled"] == 1
        # a cancelled sequence leaves no prefix behind: its KV is freed at once
        assert rt.kv.used == len(sched.batch.idle)
    finally:
        sched.close()


def test_stop_strings_end_the_request_and_are_not_emitted(demo_package):
    rt = Runtime(demo_package, max_batch=1, context=128, level=8)
    free = rt.generate("In the beginning", 24, GREEDY, stop_at_eos=False)
    cut = free.text.split()[3]                     # a word the greedy reply will produce
    sched = _scheduler(rt)
    try:
        sink = Collect()
        sched.submit(Request(rt.encode("In the beginning"), 24, GREEDY, sink, stop=(cut,)))
        assert sink.ended.wait(30)
        assert sink.done.finish_reason == "stop"
        assert sink.text == free.text[:free.text.index(cut)]
        assert len(sink.tokens) < 24
    finally:
        sched.close()


def test_logprobs_reach_the_sink(demo_package):
    rt = Runtime(demo_package, max_batch=1, context=128)
    sched = _scheduler(rt)
    try:
        sink = Collect()
        sched.submit(Request(rt.encode("In the beginning"), 4, GREEDY, sink, logprobs=3))
        assert sink.ended.wait(30)
        for t in sink.tokens:
            assert len(t.top) == 3 and t.top[0][0] == t.id      # greedy: the sampled one is the best
            assert t.logprob == pytest.approx(t.top[0][1]) and t.logprob <= 0
    finally:
        sched.close()


def test_expert_batch_cap_follows_the_cache(demo_package):
    assert distinct_experts(64, 8, 1) == pytest.approx(8)
    assert distinct_experts(64, 8, 8) == pytest.approx(42.0, abs=0.1)
    rt = Runtime(demo_package, max_batch=4, context=64)
    assert expert_batch_cap(rt, 4) == 4                          # resident: slots only
    # the demo: 8 experts, top-2 -> 2, 3.5, 4.625, 5.47 distinct experts per layer at B = 1..4
    tight = Runtime(demo_package, max_batch=4, context=64, budget="1%", budget_or_minimum=1.01, level=8)
    per = tight.pkg.layout.prefix_length(8)
    assert tight.budget_plan.experts < 3.5 * per and expert_batch_cap(tight, 4) == 1
    roomy = Runtime(demo_package, max_batch=4, context=64, budget="100%", level=8)
    assert roomy.budget_plan.experts >= 5.47 * per and expert_batch_cap(roomy, 4) == 4
    # in between, the largest B whose working set fits (a runtime's figures, set by hand)
    from types import SimpleNamespace
    for cache, want in ((3.6, 2), (4.7, 3), (4.5, 2), (1.0, 1)):
        fake = SimpleNamespace(budgeted=object(), arch=tight.arch, pkg=tight.pkg, level=8,
                               budget_plan=SimpleNamespace(experts=int(cache * per)))
        assert expert_batch_cap(fake, 4) == want, cache
