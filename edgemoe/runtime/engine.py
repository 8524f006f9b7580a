"""Runtime: run an .edgemoe package (numpy + onnxruntime).

Per forward step (T new tokens, batch 1): embed graph -> for each layer, its ONNX graph (attention with
KV cache in/out, router logits) -> routing (numpy) -> the chosen experts, expert-major (every token
routed to an expert runs in one call) -> head graph. All experts are resident at one level here; the
memory-budgeted cache builds on the same pieces.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from edgemoe.backends import get_backend
from edgemoe.errors import BudgetError, ConfigError, PackageError
from edgemoe.package.reader import Package
from edgemoe.package.graph_io import DENSE_OUTPUTS, MOE_OUTPUTS
from edgemoe.runtime.events import Event
from edgemoe.runtime.expert_store import ExpertStore
from edgemoe.runtime.budget import PREFILL_CHUNK, fmt_size, plan_budget
from edgemoe.runtime.budgeted import BudgetedExperts
from edgemoe.runtime.kv_cache import KVCache
from edgemoe.runtime.memory import pin_malloc_mmap_threshold, rss_bytes, start_libraries
from edgemoe.runtime.rope import causal_mask, rope_tables
from edgemoe.runtime.routing import route
from edgemoe.runtime.sampling import Sampler, SamplingConfig


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    ids: list[int]                       # generated ids only
    text: str | None
    prefill_seconds: float
    decode_seconds: float
    stats: dict = field(default_factory=dict)

    @property
    def decode_tokens_per_s(self) -> float:
        n = max(len(self.ids) - 1, 0)
        return n / self.decode_seconds if self.decode_seconds > 0 else 0.0


def _budget_backend(pkg: Package) -> str:
    """Under a budget experts must compute on their record bytes: TVM kernels when the package has
    them for this machine (``edgemoe compile PKG --device host``) and apache-tvm imports, else the
    numpy ``planes`` kernel."""
    if not (pkg.root / "kernels" / "host" / "index.yaml").exists():
        return "planes"
    from edgemoe.backends.tvm.backend import TvmBackend
    return "tvm" if TvmBackend().is_available() else "planes"


class Runtime:
    """Run a package: ``forward(ids) -> logits`` and ``generate(prompt, ...)``.

    Parameters
    ----------
    package : path of an .edgemoe package (or an open ``Package``)
    level : bits every expert computes at (a level of the package's ladder; default the highest),
        or "auto" under a budget: the policy picks per expert
    backend : expert kernels: "ort" (default without a budget), "planes" (numpy on the record's bit
        planes; default under a budget), "tvm" (needs ``edgemoe compile PKG --device host``), "hls"
        (the FPGA's integer path), "reference" (numpy ground truth)
    threads : onnxruntime intra-op threads for the dense graphs
    exact : with "ort", experts compute in fp32 (slow; bit-faithful to the numpy reference) instead
        of onnxruntime's int8-activation fast path
    budget : None (every expert resident), bytes, a size ("1.5GiB") or "NN%" (the fixed part plus
        NN% of the experts at the top level); see ``edgemoe.runtime.budget``
    policy, policy_args : scheduling policy under a budget ("hebf", "lru", "lfu", "static" with
        ``{"profile": heat}``, "belady" with ``{"future": accesses}``)
    context : tokens of KV cache the budget reserves
    trace : path to record the routing trace (under a budget)
    prefetch : look-ahead prefetch of the next layer's predicted experts (under a budget)
    io_threads, direct_io, read_delay_s : the loader's threads, O_DIRECT use, and an artificial
        per-read delay (to emulate a slow disk)
    events : an event sink (``edgemoe.runtime.events``) the profiler listens with
    """

    def __init__(self, package, level: int | str | None = None, backend: str | None = None,
                 threads: int = 1, exact: bool = False, budget=None, policy: str = "hebf",
                 context: int = 512, trace=None, prefetch: bool = True, io_threads: int = 2,
                 direct_io: bool = True, read_delay_s: float = 0.0, policy_args: dict | None = None,
                 events=None):
        self.pkg = package if isinstance(package, Package) else Package(package)
        self.arch = self.pkg.arch
        ladder = self.pkg.quant.ladder
        auto = level == "auto"
        if auto and budget is None:
            raise ConfigError("--level auto lets the scheduler choose levels under a budget; "
                              "give --budget too, or a fixed --level")
        self.level = None if auto else (ladder[-1] if level is None else int(level))
        if self.level is not None:
            self.pkg.quant.level_index(self.level)  # ConfigError naming the valid levels
        if budget is None and trace is not None:
            raise ConfigError("routing traces are recorded by the budgeted runtime; give --budget "
                              "(e.g. --budget 100% to keep every expert)")
        if budget is not None and backend in ("ort", "reference"):
            raise ConfigError(f"backend {backend!r} keeps its own copy of every loaded expert "
                              f"(onnxruntime's packed weights: 2.4-4.8x the record; reference: float32), "
                              f"which a byte budget cannot bound; under --budget use planes, tvm or hls")
        if budget is not None:
            pin_malloc_mmap_threshold()
            start_libraries()   # their start-up is the process's baseline, not this model's memory
        rss0 = rss_bytes()
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        so.enable_cpu_mem_arena = False
        for rel in [self.pkg.embed_graph, self.pkg.head_graph, *self.pkg.layer_graphs]:
            self.pkg.check_file(rel)  # streamed sha256 of the graph and of its .data
            if rel + ".data" in self.pkg.files:
                self.pkg.check_file(rel + ".data")
        load = lambda rel: ort.InferenceSession(str(self.pkg.path(rel)), so,  # noqa: E731
                                                providers=["CPUExecutionProvider"])
        self._embed = load(self.pkg.embed_graph)
        self._head = load(self.pkg.head_graph)
        self._layers = [load(rel) for rel in self.pkg.layer_graphs]
        self.kv = KVCache(self.arch)
        self._tokenizer = None
        self.last_routing: list[np.ndarray] = []   # per MoE layer: experts [T, k] of the last step
        self.budget_plan = None
        self.trace = None
        self._routers = {}
        self.recall = [0, 0]                        # prefetch prediction: (hits, actual)
        self.events = events                        # an EventSink (see runtime/events.py) or None
        self._step = 0
        if budget is None:
            self.backend = get_backend(backend or "ort",
                                       **({"exact": exact} if (backend or "ort") == "ort" else {}))
            self.store = ExpertStore(self.pkg)
            self._experts: dict[tuple[int, int], object] = {}
            for key in sorted(self.pkg.experts):
                buf = self.store.read(*key, self.level)
                self._experts[key] = self.backend.load(self.pkg, *key, self.level, buf)
            self.budgeted = None
            return
        self.backend = get_backend(backend or _budget_backend(self.pkg))
        if self.backend.name == "tvm":
            self.backend.prepare(self.pkg)    # load its kernel library now: a measured fixed cost
        if self.pkg.tokenizer_file is not None:
            self.tokenizer  # noqa: B018  (load it now so its memory is measured as fixed)
        self._warm_dense()   # onnxruntime's first-run allocations are fixed costs: measure them
        measured = rss_bytes() - rss0 if rss0 else 0
        self.budget_plan = plan_budget(self.pkg, budget, context=context, level=self.level,
                                       measured_fixed=measured)
        if trace is not None:
            from edgemoe.runtime.trace import TraceWriter
            self.trace = TraceWriter(trace, self.package_id, {"budget": self.budget_plan.budget,
                                                               "policy": policy, "level": level})
        from edgemoe.schedulers import make_policy
        keys = sorted(self.pkg.experts)
        self.policy = make_policy(policy, experts=keys, **(policy_args or {}))
        self.budgeted = BudgetedExperts(self.pkg, self.backend, self.budget_plan.experts, self.policy,
                                        self.level, io_threads=io_threads, direct=direct_io,
                                        read_delay_s=read_delay_s, trace=self.trace, events=events)
        self.store = self.budgeted.loader
        if prefetch:
            from edgemoe.package.graph_io import ROUTER_WEIGHT, read_initializer
            try:
                for i in self.arch.moe_layers:
                    self._routers[i] = read_initializer(self.pkg.path(self.pkg.layer_graphs[i]),
                                                        ROUTER_WEIGHT)      # [H, E]
            except KeyError:       # exported before routers were named: run without prefetch
                self._routers = {}

    def _warm_dense(self):
        """One token through the dense graphs (experts skipped), then forget it."""
        a = self.arch
        hidden = self._embed.run(None, {"ids": np.zeros(1, dtype=np.int64)})[0]
        cos, sin = rope_tables(a, np.arange(1))
        empty = np.zeros((a.num_kv_heads, 0, a.head_dim), dtype=np.float32)
        for i, sess in enumerate(self._layers):
            outs = sess.run(MOE_OUTPUTS if a.is_moe_layer(i) else DENSE_OUTPUTS,
                            {"hidden": hidden, "cos": cos, "sin": sin, "mask": causal_mask(0, 1),
                             "past_k": empty, "past_v": empty})
            hidden = outs[0]
        self._head.run(None, {"hidden": hidden})

    @property
    def package_id(self) -> str:
        return self.pkg.package_id

    # ---- model ----
    def reset(self):
        """Forget the KV cache (start a new sequence)."""
        self.kv.reset()

    def forward(self, token_ids) -> np.ndarray:
        """Run the new tokens through the model, extending the KV cache; under a budget, long
        prompts go through in chunks of PREFILL_CHUNK tokens (bounded activations).

        Parameters
        ----------
        token_ids : sequence of int, length T >= 1

        Returns
        -------
        logits : float32 [T, vocab]
        """
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if self.budgeted is not None and ids.size > PREFILL_CHUNK:
            return np.concatenate([self._forward(ids[s:s + PREFILL_CHUNK])
                                   for s in range(0, ids.size, PREFILL_CHUNK)])
        return self._forward(ids)

    def _forward(self, token_ids) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ConfigError("forward needs at least one token id")
        if ids.min() < 0 or ids.max() >= self.arch.vocab_size:
            raise ConfigError(f"token ids must be in 0..{self.arch.vocab_size - 1}")
        past, t = self.kv.length, ids.size
        if past + t > self.arch.max_position:
            raise ConfigError(f"sequence of {past + t} tokens exceeds the model's max_position "
                              f"{self.arch.max_position}; reset() or shorten the prompt")
        if self.budget_plan is not None and past + t > self.budget_plan.context:
            raise BudgetError(f"sequence of {past + t} tokens exceeds the {self.budget_plan.context}-token "
                              f"context whose KV cache the budget reserved; raise --context (the KV "
                              f"cache then takes {fmt_size(KVCache.bytes_for(self.arch, past + t))}) "
                              f"or shorten the prompt")
        t_step = time.perf_counter()
        hidden = self._embed.run(None, {"ids": ids})[0]
        cos, sin = rope_tables(self.arch, np.arange(past, past + t))
        mask = causal_mask(past, t)
        self.last_routing = []
        self._pending_pred = None
        for i, sess in enumerate(self._layers):
            pk, pv = self.kv.get(i)
            feeds = {"hidden": hidden, "cos": cos, "sin": sin, "mask": mask, "past_k": pk, "past_v": pv}
            t0 = time.perf_counter()
            moe = self.arch.is_moe_layer(i)
            outs = sess.run(MOE_OUTPUTS if moe else DENSE_OUTPUTS, feeds)
            if self.events is not None:
                self.events(Event("dense", t0, time.perf_counter(), self._step, i))
            if moe:
                residual, moe_in, logits, k, v = outs
                hidden = residual + self.arch.residual_multiplier * self._moe(i, moe_in, logits)
            else:
                hidden, k, v = outs
            self.kv.put(i, k, v)
        self.kv.advance(t)
        if self.budgeted is not None:
            self.budgeted.end_step()
        logits = self._head.run(None, {"hidden": hidden})[0]
        if self.events is not None:
            self.events(Event("step", t_step, time.perf_counter(), self._step, nbytes=t))
        self._step += 1
        return logits

    def _moe(self, layer: int, x: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Expert-major: each chosen expert runs once on all tokens routed to it."""
        experts, weights = route(logits, self.arch)              # [T, k], [T, k]
        self.last_routing.append(experts)
        if self.budgeted is not None:
            pred = self._predict(layer, x)
            if self._pending_pred is not None:
                actual = set(np.unique(experts).tolist())
                self.recall[0] += len(actual & self._pending_pred)
                self.recall[1] += len(actual)
            self._pending_pred = {e for _, e in pred} or None
            return self.budgeted.compute(layer, x, experts, weights, pred)
        out = np.zeros_like(x)
        for e in np.unique(experts):
            rows, slot = np.nonzero(experts == e)
            y = self.backend.run(self._experts[(layer, int(e))], x[rows])
            out[rows] += weights[rows, slot, None] * y
        return out

    def _predict(self, layer: int, x: np.ndarray) -> tuple:
        """The next MoE layer's experts, from its router applied to this layer's MoE input."""
        nxt = [i for i in self.arch.moe_layers if i > layer]
        if not self._routers or not nxt:
            return ()
        experts, _ = route(x @ self._routers[nxt[0]], self.arch)
        return tuple((nxt[0], int(e)) for e in np.unique(experts))

    # ---- text ----
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.pkg.tokenizer_file is None:
                raise PackageError(f"{self.pkg.root} has no tokenizer; pass token ids instead of text, "
                                   f"or export from a checkpoint folder that has tokenizer.json")
            from tokenizers import Tokenizer
            try:
                self._tokenizer = Tokenizer.from_str(self.pkg.read_file(self.pkg.tokenizer_file).decode())
            except Exception as e:  # tokenizers raises a bare Exception for any parse error
                raise PackageError(f"{self.pkg.tokenizer_file} in {self.pkg.root} cannot be loaded "
                                   f"({e}); re-export the package from a checkpoint whose "
                                   f"tokenizer.json loads with `tokenizers`") from e
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text).ids
        if self.pkg.add_bos and self.arch.bos_token_id is not None:
            ids = [self.arch.bos_token_id] + ids
        return ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    def stream(self, prompt, max_new_tokens: int = 32, sampling: SamplingConfig | None = None,
               stop_at_eos: bool = True) -> Iterator[int]:
        """Yield generated token ids one by one (starts a new sequence)."""
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        if not ids:
            raise ConfigError("the prompt is empty; give some text or token ids")
        sampler = Sampler(sampling or SamplingConfig())
        self.reset()
        logits = self.forward(ids)[-1]
        for _ in range(max_new_tokens):
            nxt = sampler(logits)
            yield nxt
            if stop_at_eos and nxt in self.arch.eos_token_ids:
                return
            logits = self.forward([nxt])[-1]

    def generate(self, prompt, max_new_tokens: int = 32, sampling: SamplingConfig | None = None,
                 stop_at_eos: bool = True) -> GenerationResult:
        """Generate from text (needs the package's tokenizer) or a list of token ids."""
        prompt_ids = self.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        t0 = time.perf_counter()
        out, t_first = [], None
        for tok in self.stream(prompt_ids, max_new_tokens, sampling, stop_at_eos):
            if t_first is None:
                t_first = time.perf_counter()
            out.append(tok)
        t1 = time.perf_counter()
        text = self.decode(out) if self.pkg.tokenizer_file is not None else None
        return GenerationResult(prompt_ids, out, text, (t_first or t1) - t0, t1 - (t_first or t1),
                                stats=self.stats())

    def stats(self) -> dict:
        """Counters of the run so far: bytes read, hits, waits, level mix, prefetch recall."""
        s = {"expert_bytes_read": self.store.bytes_read, "level": self.level}
        if self.budgeted is not None:
            b = self.budgeted
            calls = max(b.stats["expert_calls"], 1)
            s.update(budget=self.budget_plan.to_dict(), cache_peak_bytes=b.cache.peak,
                     hit_rate=b.stats["hits"] / calls, expert_calls=int(b.stats["expert_calls"]),
                     io_wait_s=b.loader.wait_seconds, io_busy_s=b.loader.io_seconds,
                     expert_compute_s=b.stats["compute_s"], direct_io=b.loader.used_direct,
                     level_mix={int(k): int(v) for k, v in sorted(b.level_mix.items())},
                     prefetch_recall=self.recall[0] / self.recall[1] if self.recall[1] else None,
                     steps=b.step)
        return s

    def close(self):
        if self.budgeted is not None:
            self.budgeted.close()
        else:
            self.store.close()
        if self.trace is not None:
            self.trace.close()

