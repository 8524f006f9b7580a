"""Continuous batching over ``Runtime.step``: sequences join and leave between steps.

Each sequence has its own KV cache slot, position and sampler. A step feeds every decoding sequence
its last token and prompt tokens of joining sequences, at most ``prefill_chunk`` of them in all,
in order of arrival (chunked prefill beside the others' decode: a long prompt never stalls them for
more than a chunk, several short prompts start together and share their experts' calls, and the
step's activations stay within what the budget planned: one chunk plus one row per other
sequence). A sequence leaves when it ends (EOS, its token limit) or is cancelled, and frees its
slot at once.

    batch = rt.batch()
    a = batch.add(ids_a, max_new_tokens=32)
    b = batch.add(ids_b, max_new_tokens=8, sampling=SamplingConfig(greedy=False, seed=1))
    while batch.active:
        for seq_id, token in batch.step():
            ...

Prompt reuse: a finished sequence's KV stays in its slot (an idle prefix, least recently used
first to go) until the slot is needed. A new sequence whose prompt starts with such a prefix (the
next turn of a chat: the previous prompt and reply, then the new message) takes that slot and
prefills only what follows the common part.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from edgemoe.errors import BudgetError, ConfigError
from edgemoe.runtime.budget import PREFILL_CHUNK
from edgemoe.runtime.sampling import Sampler, SamplingConfig, token_logprobs


@dataclass
class Sequence:
    id: int
    prompt: list[int]
    max_new_tokens: int
    sampler: Sampler
    stop_at_eos: bool
    slot: int
    fed: int = 0                              # prompt tokens already in the KV cache
    ids: list[int] = field(default_factory=list)   # generated
    finish_reason: str | None = None          # "stop" (EOS or a stop string), "length", "cancelled"
    logprobs: int | None = None               # None: off; n: the sampled token's logprob + top n
    token_logprobs: list = field(default_factory=list)   # per generated token: (logprob, [(id, lp)])
    reused: int = 0                           # prompt tokens whose KV came from an earlier sequence

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.prompt)


class Batch:
    """Sequences decoding together on one runtime (at most ``rt.max_batch`` at once)."""

    def __init__(self, rt, prefill_chunk: int = PREFILL_CHUNK, reuse_prefixes: bool = True):
        if prefill_chunk < 1:
            raise ConfigError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        if rt.budgeted is not None and prefill_chunk > PREFILL_CHUNK:
            raise ConfigError(f"under a budget prompts are prefilled in chunks of at most "
                              f"{PREFILL_CHUNK} tokens (what its work buffers were planned for); "
                              f"got prefill_chunk={prefill_chunk}")
        self.rt, self.prefill_chunk = rt, int(prefill_chunk)
        self.reuse_prefixes = reuse_prefixes
        self.seqs: dict[int, Sequence] = {}       # active, by id
        self.finished: dict[int, Sequence] = {}
        self.idle: OrderedDict[int, list[int]] = OrderedDict()   # slot -> ids in its KV, LRU first
        self._next_id = 0
        rt.kv.lengths[:] = 0
        rt.kv.used = 0                            # the batch owns every slot from now on

    @property
    def active(self) -> int:
        return len(self.seqs)

    @property
    def free_slots(self) -> int:
        """Slots a new sequence can take (idle prefixes are given up when needed)."""
        return self.rt.kv.slots - self.rt.kv.used + len(self.idle)

    def _take_slot(self, ids: list[int]) -> tuple[int, int]:
        """A slot for a prompt, and how many of its tokens are already in that slot's KV: the idle
        prefix sharing the longest start with it, else a free slot, else the least recently used
        idle one's."""
        best, best_n = None, 0
        if self.reuse_prefixes:
            for slot, held in self.idle.items():
                n = _common_prefix(held, ids)
                if n > best_n:
                    best, best_n = slot, n
        if best is not None:
            del self.idle[best]
            reused = min(best_n, len(ids) - 1)       # the last prompt token is fed for its logits
            if not self.rt.kv.can_truncate(best, reused):
                reused = 0           # a windowed layer already evicted what the shorter prefix needs
            self.rt.kv.lengths[best] = reused
            return best, reused
        if self.rt.kv.used >= self.rt.kv.slots and self.idle:
            self._release(next(iter(self.idle)))
        return self.rt.kv.acquire(), 0

    def add(self, prompt, max_new_tokens: int = 32, sampling: SamplingConfig | None = None,
            stop_at_eos: bool = True, logprobs: int | None = None) -> int:
        """Join a sequence (its prefill starts at the next step); returns its id. ``logprobs``:
        record each generated token's log-probability and the top ``logprobs`` alternatives.
        Raises BudgetError when every KV cache slot is taken."""
        ids = self.rt.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        if not ids:
            raise ConfigError("the prompt is empty; give some text or token ids")
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not self.free_slots:
            raise BudgetError(f"all {self.rt.kv.slots} KV cache slots are in use; raise the batch "
                              f"size (max_batch / --parallel) or wait for a sequence to finish")
        slot, reused = self._take_slot(ids)
        seq = Sequence(self._next_id, ids, int(max_new_tokens), Sampler(sampling or SamplingConfig()),
                       stop_at_eos, slot, fed=reused, logprobs=logprobs, reused=reused)
        self.seqs[seq.id] = seq
        self._next_id += 1
        return seq.id

    def cancel(self, seq_id: int):
        """Leave now (a client went away): the slot and its KV are freed at once."""
        seq = self.seqs.get(seq_id)
        if seq is not None:
            self._finish(seq, "cancelled")

    def finish(self, seq_id: int, reason: str = "stop"):
        """End a sequence early (a stop string matched); its KV is kept for prompt reuse."""
        seq = self.seqs.get(seq_id)
        if seq is not None:
            self._finish(seq, reason)

    def drop_prefixes(self):
        """Free every idle prefix's slot."""
        while self.idle:
            self._release(next(iter(self.idle)))

    def _release(self, slot: int):
        self.idle.pop(slot, None)
        moved = self.rt.kv.release(slot)
        if moved is None:        # the last slot's sequence (or idle prefix) moved into the freed one
            return
        if moved in self.idle:
            self.idle[slot] = self.idle.pop(moved)
            return
        for other in self.seqs.values():
            if other.slot == moved:
                other.slot = slot
                return

    def _finish(self, seq: Sequence, reason: str):
        seq.finish_reason = reason
        del self.seqs[seq.id]
        self.finished[seq.id] = seq
        held = int(self.rt.kv.lengths[seq.slot])
        if self.reuse_prefixes and reason != "cancelled" and held:
            # the KV holds the prompt and every generated token but the last (never fed)
            self.idle[seq.slot] = (seq.prompt + seq.ids)[:held]
        else:
            self._release(seq.slot)

    def step(self) -> list[tuple[int, int]]:
        """One engine step; returns (sequence id, new token) for each token generated."""
        if not self.seqs:
            return []
        feeds, owners, room = [], [], self.prefill_chunk
        for seq in sorted(self.seqs.values(), key=lambda s: s.id):     # oldest first
            if seq.prefilling:
                if room > 0:          # the step's prompt tokens; later joiners wait their turn
                    chunk = seq.prompt[seq.fed:seq.fed + room]
                    room -= len(chunk)
                    feeds.append((seq.slot, chunk))
                    owners.append(seq)
            else:
                feeds.append((seq.slot, seq.ids[-1:]))
                owners.append(seq)
        logits = self.rt.step(feeds)
        out = []
        for seq, (_, fed), lg in zip(owners, feeds, logits):
            if seq.prefilling:
                seq.fed += len(fed)
                if seq.prefilling:
                    continue
            tok = seq.sampler(lg[-1], seq.ids)
            if seq.logprobs is not None:
                seq.token_logprobs.append(token_logprobs(lg[-1], tok, seq.logprobs))
            seq.ids.append(tok)
            out.append((seq.id, tok))
            if seq.stop_at_eos and tok in self.rt.arch.eos_token_ids:
                self._finish(seq, "stop")
            elif len(seq.ids) >= seq.max_new_tokens:
                self._finish(seq, "length")
        return out

    def run(self) -> dict[int, list[int]]:
        """Step until every sequence has finished; generated ids by sequence id."""
        while self.seqs:
            self.step()
        return {i: s.ids for i, s in sorted(self.finished.items())}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def generate_batch(rt, prompts, max_new_tokens: int = 32, sampling: SamplingConfig | None = None,
                   stop_at_eos: bool = True) -> list[list[int]]:
    """Generate for several prompts at once (at most ``rt.max_batch`` in flight; the rest join as
    slots free up; each prompt computed afresh, as alone). Returns the generated ids of each prompt,
    in order."""
    batch = Batch(rt, reuse_prefixes=False)
    pending = list(enumerate(prompts))
    ids_of: dict[int, int] = {}
    while pending or batch.active:
        while pending and batch.free_slots:
            j, p = pending.pop(0)
            ids_of[batch.add(p, max_new_tokens, sampling, stop_at_eos)] = j
        batch.step()
    out: list = [None] * len(ids_of)
    for sid, seq in batch.finished.items():
        out[ids_of[sid]] = seq.ids
    rt.kv.reset()
    return out
