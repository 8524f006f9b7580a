"""Runtime: run an .edgemoe package (numpy + onnxruntime).

One step runs new tokens of one or more sequences (each in its own KV cache slot): embed graph ->
for each layer, its ONNX graph once per group of sequences (all decoding sequences of a contiguous
run of slots together, each prefill chunk alone; attention writes K/V into the cache in place) ->
routing (numpy) over every row of the step -> the chosen experts, expert-major across the batch
(every row routed to an expert, whichever sequence it belongs to, runs in one call) -> head graph
on the rows whose logits are wanted. Experts are resident at one level, or streamed under a budget
(``budgeted.py``). ``edgemoe.runtime.batch`` schedules sequences joining and leaving over ``step``.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from edgemoe.backends import get_backend
from edgemoe.backends.base import run_group
from edgemoe.errors import BudgetError, ConfigError, PackageError
from edgemoe.package.reader import Package
from edgemoe.package.graph_io import (DEFAULT_KV_DTYPE, DENSE_OUTPUTS, KV_OUTPUTS, KV_SCALE_INPUTS,
                                      MOE_OUT_NORM, MOE_OUTPUTS, ROUTER_BIAS, ROUTER_WEIGHT,
                                      SELECTION_BIAS, read_initializers)
from edgemoe.runtime.events import Event
from edgemoe.runtime.expert_rows import ExpertRows
from edgemoe.package.record_store import ExpertStore
from edgemoe.runtime.budget import PREFILL_CHUNK, fmt_size, plan_budget
from edgemoe.runtime.budgeted import BudgetedExperts
from edgemoe.runtime.kv_cache import KVCache, check_kv_dtype
from edgemoe.runtime.memory import pin_malloc_mmap_threshold, reset_peak_rss, rss_bytes, start_libraries
from edgemoe.runtime.rope import rope_tables
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


def _expert_backend(name: str, threads: int, exact: bool):
    """The expert backend ``name`` with the options it takes: threads (ort, tvm), exact (ort)."""
    kw = {"ort": {"threads": threads, "exact": exact}, "tvm": {"threads": threads}}.get(name, {})
    return get_backend(name, **kw)


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
    threads : compute threads: onnxruntime intra-op threads of the dense graphs and of the
        onnxruntime experts (TVM kernels read ``TVM_NUM_THREADS``, set from it when unset)
    exact : with "ort", experts compute in fp32 (slow; bit-faithful to the numpy reference) instead
        of onnxruntime's int8-activation fast path
    budget : None (every expert resident), bytes, a size ("1.5GiB") or "NN%" (the fixed part plus
        NN% of the experts at the top level); see ``edgemoe.runtime.budget``
    policy, policy_args : scheduling policy under a budget ("hebf", "lru", "lfu", "static" with
        ``{"profile": heat}``, "belady" with ``{"future": accesses}``)
    context : tokens of KV cache per sequence: what the budget reserves (a longer sequence is
        refused); without a budget, where the cache starts (it doubles as sequences grow)
    kv_dtype : the KV cache's element type: "f16" (default), "f32" (exact), "int8" (per-channel
        scales calibrated at export)
    max_batch : sequences that can be in flight at once (KV cache slots; ``step`` and
        ``edgemoe.runtime.batch``); the budget reserves a full context for each
    budget_or_minimum : a budget below the minimum becomes the minimum times this (> 1; the
        demo's default) instead of a BudgetError
    held_outside : bytes the process holds beside the runtime that the budget must also cover
        (``edgemoe serve`` measures its HTTP stack and passes it)
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
                 events=None, kv_dtype: str = DEFAULT_KV_DTYPE, max_batch: int = 1,
                 budget_or_minimum: float = 0.0, held_outside: int = 0):
        self.pkg = package if isinstance(package, Package) else Package(package)
        self.arch = self.pkg.arch
        ladder = self.pkg.quant.ladder
        auto = level == "auto"
        if auto and budget is None:
            raise ConfigError("--level auto lets the scheduler choose levels under a budget; "
                              "give --budget too, or a fixed --level")
        self.level = None if auto else (ladder[-1] if level is None else int(level))
        self.kv_dtype = check_kv_dtype(kv_dtype)
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        if context < 1:
            raise ConfigError(f"context must be >= 1 token, got {context}")
        self._kv_scales = self.pkg.kv_scales() if kv_dtype == "int8" else None
        if self.level is not None:
            self.pkg.quant.level_index(self.level)  # ConfigError naming the valid levels
        if budget is None and trace is not None:
            raise ConfigError("routing traces are recorded by the budgeted runtime; give --budget "
                              "(e.g. --budget 100% to keep every expert)")
        if budget is not None and backend in ("ort", "reference"):
            raise ConfigError(f"backend {backend!r} keeps its own copy of every loaded expert "
                              f"(onnxruntime's packed weights: 1.5-1.7x the record; reference: float32), "
                              f"which a byte budget cannot bound; under --budget use planes, tvm or hls")
        if budget is not None:
            pin_malloc_mmap_threshold()
            start_libraries()   # their start-up is the process's baseline, not this model's memory
        reset_peak_rss()
        rss0 = rss_bytes()
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        so.enable_cpu_mem_arena = False
        if threads > 1:     # idle workers spinning after a dense graph took the expert threads' cores
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        layer_graphs = self.pkg.kv_layer_graphs.get(self.kv_dtype)
        if layer_graphs is None:
            raise PackageError(f"{self.pkg.root} has no layer graphs for a {self.kv_dtype} KV cache "
                               f"(it has {', '.join(self.pkg.kv_layer_graphs)}); choose one of those "
                               f"or re-export the package")
        # the f32 graphs name the weights files every KV type's graphs read (the same list for f32)
        for rel in dict.fromkeys([self.pkg.embed_graph, self.pkg.head_graph, *layer_graphs,
                                  *self.pkg.layer_graphs]):
            self.pkg.check_file(rel)  # streamed sha256 of the graph and of its .data
            if rel + ".data" in self.pkg.files:
                self.pkg.check_file(rel + ".data")
        load = lambda rel: ort.InferenceSession(str(self.pkg.path(rel)), so,  # noqa: E731
                                                providers=["CPUExecutionProvider"])
        self._embed = load(self.pkg.embed_graph)
        self._head = load(self.pkg.head_graph)
        self._layers = [load(rel) for rel in layer_graphs]
        self.max_batch = int(max_batch)
        self._bindings: dict = {}            # (layer, lo, hi, capacity) -> kept decode IOBinding
        self._bound_capacity = None          # the KV capacity those bindings were made for
        self.kv = KVCache(self.arch, context, slots=max_batch, kv_dtype=self.kv_dtype,
                          growable=budget is None)
        self.kv.reset()
        self._tokenizer = None
        self._layer_tensors = self._read_layer_tensors(prefetch=budget is not None and prefetch)
        self.last_routing: list[np.ndarray] = []   # per MoE layer: experts [T, k] of the last step
        self.budget_plan = None
        self.trace = None
        self.recall = [0, 0]                        # prefetch prediction: (hits, actual)
        self.events = events                        # an EventSink (see runtime/events.py) or None
        self._step = 0
        if budget is None:
            self.backend = _expert_backend(backend or "ort", threads, exact)
            self.store = ExpertStore(self.pkg)
            self._experts: dict[tuple[int, int], object] = {}
            for key in sorted(self.pkg.experts):
                buf = self.store.read(*key, self.level)
                self._experts[key] = self.backend.load(self.pkg, *key, self.level, buf)
            self.budgeted = None
            return
        self.backend = _expert_backend(backend or _budget_backend(self.pkg), threads, exact)
        if self.backend.name == "tvm":
            self.backend.prepare(self.pkg)    # load its kernel library now: a measured fixed cost
        if self.pkg.tokenizer_file is not None:
            self.tokenizer  # noqa: B018  (load it now so its memory is measured as fixed)
        # one step of the largest shape the budget plans for (a prefill chunk beside the other
        # sequences' decode, late in the context) through the dense graphs and one expert: what it
        # leaves resident (sessions, heap) and its transient peak are measured, not estimated
        warm = min(PREFILL_CHUNK, context) + max_batch - 1
        self._warm_dense(warm, context)
        self._warm_experts(io_threads, direct_io, warm)
        measured = rss_bytes() - rss0 if rss0 else 0
        transient = max(rss_bytes("VmHWM") - rss0 - measured, 0) if rss0 else 0
        self.budget_plan = plan_budget(self.pkg, budget, context=context, level=self.level,
                                       measured_fixed=measured, measured_work=transient,
                                       kv_dtype=self.kv_dtype, batch=self.max_batch,
                                       or_minimum=budget_or_minimum, outside=held_outside)
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

    def _read_layer_tensors(self, prefetch: bool) -> dict[int, dict[str, np.ndarray]]:
        """Per MoE layer, what the runtime computes with beside the graph: the router's selection
        bias (SELECTION_BIAS [E]), a post-norm MoE's output norm (MOE_OUT_NORM [H]) and, for the
        next-layer prediction under a budget, the router (ROUTER_WEIGHT [H, E], ROUTER_BIAS [E]).
        A package exported before routers were named has none: it runs without prefetch."""
        a = self.arch
        names = ([SELECTION_BIAS] if a.router.selection_bias else []) + \
            ([MOE_OUT_NORM] if a.post_norm else []) + ([ROUTER_WEIGHT, ROUTER_BIAS] if prefetch else [])
        if not names:
            return {i: {} for i in a.moe_layers}
        out = {i: read_initializers(self.pkg.path(self.pkg.layer_graphs[i]), names) for i in a.moe_layers}
        for i, t in out.items():
            for need in {SELECTION_BIAS, MOE_OUT_NORM} & set(names) - set(t):
                raise PackageError(f"layer {i}'s graph in {self.pkg.root} lacks {need}, which this "
                                   f"{a.family} package routes with; re-export the package")
        return out

    def _warm_dense(self, tokens: int = 1, context: int = 1):
        """``tokens`` tokens through the dense graphs (experts skipped) in slot 0 at the end of a
        ``context``-token cache (attention's buffers at their largest), then forget them."""
        tokens, context = min(tokens, context, self.kv.capacity), min(context, self.kv.capacity)
        hidden = self._embed.run(None, {"ids": np.zeros(tokens, dtype=np.int64)})[0]
        pos = np.arange(context - tokens, context)[None]
        for i in range(self.arch.num_layers):
            hidden = self._run_layer(i, 0, 1, hidden[None], pos)[0][0]
        self._head.run(None, {"hidden": hidden})
        self.kv.lengths[:] = 0

    def _warm_experts(self, io_threads: int, direct_io: bool, rows: int = 1):
        """The first pass through the expert path maps code and buffers once per process (numpy's
        unique and sort, the I/O threads and their malloc arenas, the backend's kernels and
        scratch: measured 3 MiB on a tiny model, which at a 5 MiB budget was most of the overrun):
        run it once now (one lowest-level expert read per I/O thread, one run on ``rows`` rows), so
        the fixed part counts it."""
        from edgemoe.runtime.loader import Loader
        a, bits = self.arch, self.pkg.quant.ladder[0]
        logits = np.linspace(-1, 1, rows * a.num_experts, dtype=np.float32).reshape(rows, -1)
        experts, _ = route(logits, a, np.zeros(a.num_experts, np.float32))
        np.unique(experts, return_counts=True)
        np.unique(experts)      # numpy 2's hash-table path (1.3 MiB on first use), unlike the above
        keys = sorted(self.pkg.experts)[:max(io_threads, 1)]
        loader = Loader(self.pkg, threads=io_threads, direct=direct_io)
        try:
            chunks = [f.result() for f in [loader.submit(*k, 0) for k in keys]]
            handle = self.backend.load(self.pkg, *keys[0], bits, chunks[:1])
            self.backend.run(handle, np.zeros((rows, a.hidden_size), np.float32))
            del handle, chunks
        finally:
            loader.close()

    @property
    def package_id(self) -> str:
        return self.pkg.package_id

    # ---- model ----
    def reset(self):
        """Forget the KV cache (start a new sequence in slot 0; other slots are released)."""
        self.kv.reset()

    def forward(self, token_ids, slot: int = 0, last_only: bool = False) -> np.ndarray:
        """Run the new tokens of one sequence (KV cache slot ``slot``; 0 = the batch-1 sequence)
        through the model, extending its KV cache; under a budget, long prompts go through in chunks
        of PREFILL_CHUNK tokens (bounded activations).

        Parameters
        ----------
        token_ids : sequence of int, length T >= 1

        last_only : the LM head on the last token only (generation needs no more)

        Returns
        -------
        logits : float32 [T, vocab] ([1, vocab] with ``last_only``)
        """
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if self.budgeted is not None and ids.size > PREFILL_CHUNK:
            parts = [self.step([(slot, ids[s:s + PREFILL_CHUNK])], all_logits=not last_only)[0]
                     for s in range(0, ids.size, PREFILL_CHUNK)]
            return parts[-1] if last_only else np.concatenate(parts)
        return self.step([(slot, ids)], all_logits=not last_only)[0]

    def _check_input(self, slot: int, ids: np.ndarray):
        if ids.size == 0:
            raise ConfigError("forward needs at least one token id")
        if ids.min() < 0 or ids.max() >= self.arch.vocab_size:
            raise ConfigError(f"token ids must be in 0..{self.arch.vocab_size - 1}")
        if not 0 <= slot < self.kv.used:
            raise ConfigError(f"KV cache slot {slot} is not in use (slots 0..{self.kv.used - 1} are)")
        past, t = int(self.kv.lengths[slot]), ids.size
        if past + t > self.arch.max_position:
            raise ConfigError(f"sequence of {past + t} tokens exceeds the model's max_position "
                              f"{self.arch.max_position}; reset() or shorten the prompt")
        if self.budget_plan is not None and past + t > self.budget_plan.context:
            raise BudgetError(f"sequence of {past + t} tokens exceeds the {self.budget_plan.context}-token "
                              f"context whose KV cache the budget reserved; raise --context (the KV "
                              f"cache then takes {fmt_size(KVCache.bytes_for(self.arch, past + t, self.kv_dtype))}) "
                              f"or shorten the prompt")
        self.kv.reserve(slot, t)

    @staticmethod
    def _groups(batch) -> list[tuple[int, int, list[int]]]:
        """(first slot, last slot + 1, entry indices): single-token entries of consecutive slots run
        as one group (one graph call per layer), every longer entry alone."""
        singles = sorted((slot, j) for j, (slot, ids) in enumerate(batch) if len(ids) == 1)
        groups = []
        for slot, j in singles:
            if groups and groups[-1][1] == slot and len(batch[groups[-1][2][0]][1]) == 1:
                groups[-1][1] += 1
                groups[-1][2].append(j)
            else:
                groups.append([slot, slot + 1, [j]])
        groups += [[slot, slot + 1, [j]] for j, (slot, ids) in enumerate(batch) if len(ids) > 1]
        return [tuple(g) for g in groups]

    def _rope(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """positions [B, S] -> cos, sin [B, S, R] (once per step and group: every layer takes them)."""
        b, t = positions.shape
        cos, sin = rope_tables(self.arch, positions.reshape(-1))
        return cos.reshape(b, t, -1), sin.reshape(b, t, -1)

    def _binding(self, i: int, lo: int, hi: int, decode: bool):
        """Layer i's IOBinding for slots lo..hi-1 with the KV buffers bound (as past and present).
        A decode binding (one token per sequence: the same shapes step after step) is kept with its
        own input and output buffers, so a call copies the step's few values in and binds nothing
        (measured on the demo: 65 us of Python per layer call otherwise)."""
        key = (i, lo, hi, self.kv.capacity)
        io = self._bindings.get(key) if decode else None
        if io is not None:
            return io
        a = self.arch
        io = self._layers[i].io_binding()
        pk, pv = self.kv.ortvalues(i, lo, hi)
        io.bind_ortvalue_input("past_k", pk)
        io.bind_ortvalue_input("past_v", pv)
        if self._kv_scales is not None:
            for name, scale in zip(KV_SCALE_INPUTS, self._kv_scales[i]):
                io.bind_cpu_input(name, scale)
        names = MOE_OUTPUTS if a.is_moe_layer(i) else DENSE_OUTPUTS
        if decode:
            b = hi - lo
            io.bufs = {"hidden": np.zeros((b, 1, a.hidden_size), np.float32),
                       "cos": np.zeros((b, 1, a.rope_dim), np.float32),
                       "sin": np.zeros((b, 1, a.rope_dim), np.float32),
                       "seqlens_k": np.zeros(b, np.int32), "total_len": np.zeros((), np.int32)}
            for n, buf in io.bufs.items():
                io.bind_ortvalue_input(n, ort.OrtValue.ortvalue_from_numpy(buf))
            io.outs = [np.zeros((b, 1, a.num_experts if n == "router_logits" else a.hidden_size),
                                np.float32) for n in names]
            for n, buf in zip(names, io.outs):
                io.bind_ortvalue_output(n, ort.OrtValue.ortvalue_from_numpy(buf))
            if len(self._bindings) > 4 * a.num_layers * self.max_batch:
                self._bindings.clear()
            self._bindings[key] = io
        else:
            for n in names:   # allocated by onnxruntime at the run's shapes; first, so they come first
                io.bind_output(n)
        io.bind_ortvalue_output(KV_OUTPUTS[0], pk)
        io.bind_ortvalue_output(KV_OUTPUTS[1], pv)
        return io

    def _run_layer(self, i: int, lo: int, hi: int, hidden: np.ndarray, positions: np.ndarray,
                   rope: tuple[np.ndarray, np.ndarray] | None = None):
        """Layer i's graph on slots lo..hi-1: hidden [B, S, H] at positions [B, S] -> its outputs
        (MOE_OUTPUTS or DENSE_OUTPUTS, [B, S, ...]); K/V land in the cache in place. A decode
        call's outputs are the binding's buffers: valid until that layer's next decode call."""
        cos, sin = rope if rope is not None else self._rope(positions)
        last = positions[:, -1]
        if positions.shape[1] == 1:
            io = self._binding(i, lo, hi, decode=True)
            bufs = io.bufs
            bufs["hidden"][...] = hidden
            bufs["cos"][...] = cos
            bufs["sin"][...] = sin
            bufs["seqlens_k"][...] = last
            bufs["total_len"][...] = last.max() + 1
            self._layers[i].run_with_iobinding(io)
            return io.outs
        io = self._binding(i, lo, hi, decode=False)
        io.bind_cpu_input("hidden", np.ascontiguousarray(hidden, dtype=np.float32))
        io.bind_cpu_input("cos", cos)
        io.bind_cpu_input("sin", sin)
        io.bind_cpu_input("seqlens_k", last.astype(np.int32))
        io.bind_cpu_input("total_len", np.array(last.max() + 1, dtype=np.int32))
        self._layers[i].run_with_iobinding(io)
        n = len(MOE_OUTPUTS if self.arch.is_moe_layer(i) else DENSE_OUTPUTS)
        return [o.numpy() for o in io.get_outputs()[:n]]

    def step(self, batch, all_logits: bool = False) -> list[np.ndarray]:
        """One forward step over several sequences.

        Parameters
        ----------
        batch : list of (slot, token_ids): each sequence's KV cache slot (``kv.acquire()``; slot 0
            is the batch-1 sequence) and its new tokens (1 while decoding; a prompt chunk while
            prefilling). A slot appears at most once. Under a budget a step carries at most
            PREFILL_CHUNK + max_batch - 1 tokens (what the budget's work buffers were planned for).
        all_logits : return logits of every new token, not only of each sequence's last

        Returns
        -------
        per entry, logits float32 [T_i, vocab] (or [1, vocab])
        """
        batch = [(int(slot), np.asarray(ids, dtype=np.int64).reshape(-1)) for slot, ids in batch]
        if not batch:
            raise ConfigError("step needs at least one sequence")
        if len({slot for slot, _ in batch}) != len(batch):
            raise ConfigError("a KV cache slot appears twice in one step")
        for slot, ids in batch:
            self._check_input(slot, ids)
        if self._bound_capacity != self.kv.capacity:   # the cache grew: its buffers are new
            self._bindings.clear()
            self._bound_capacity = self.kv.capacity
        n_rows = sum(len(ids) for _, ids in batch)
        if self.budgeted is not None and n_rows > PREFILL_CHUNK + self.max_batch - 1:
            raise ConfigError(f"a step of {n_rows} tokens is more than the budget planned for (one "
                              f"prefill chunk of {PREFILL_CHUNK} beside {self.max_batch - 1} decoding "
                              f"sequences); feed long prompts in chunks (forward does, and Batch)")
        t_step = time.perf_counter()
        groups = self._groups(batch)
        ids_all = np.concatenate([np.concatenate([batch[j][1] for j in g[2]]) for g in groups])
        hidden_all = self._embed.run(None, {"ids": ids_all})[0]                  # [N, H]
        hs, pos, r = [], [], 0
        for lo, hi, js in groups:
            t = len(batch[js[0]][1])
            pos.append(self.kv.lengths[lo:hi, None] + np.arange(t)[None, :])     # [B, S]
            hs.append(hidden_all[r:r + (hi - lo) * t].reshape(hi - lo, t, -1))
            r += (hi - lo) * t
        sizes = [h.shape[0] * h.shape[1] for h in hs]
        ropes = [self._rope(p) for p in pos]
        self.last_routing = []
        self._pending_pred = None
        for i in range(self.arch.num_layers):
            t0 = time.perf_counter()
            outs = [self._run_layer(i, lo, hi, h, p, rope)
                    for (lo, hi, _), h, p, rope in zip(groups, hs, pos, ropes)]
            if self.events is not None:
                self.events(Event("dense", t0, time.perf_counter(), self._step, i))
            if not self.arch.is_moe_layer(i):
                hs = [o[0] for o in outs]
                continue
            flat = [np.concatenate([o[k].reshape(-1, o[k].shape[-1]) for o in outs]) if len(outs) > 1
                    else outs[0][k].reshape(-1, outs[0][k].shape[-1]) for k in range(3)]
            residual, moe_in, logits = flat                                       # [N, H], [N, H], [N, E]
            h = residual + self._moe_out(i, self._moe(i, moe_in, logits))
            parts = np.split(h, np.cumsum(sizes)[:-1]) if len(outs) > 1 else [h]
            hs = [part.reshape(o[0].shape) for part, o in zip(parts, outs)]
        for lo, hi, js in groups:
            for slot in range(lo, hi):
                self.kv.advance(slot, len(batch[js[0]][1]))
        if self.budgeted is not None:
            self.budgeted.end_step()
        # rows whose logits are wanted: every row, or each sequence's last
        wanted = [h.reshape(-1, h.shape[-1]) if all_logits else h[:, -1] for h in hs]
        logits = self._head.run(None, {"hidden": np.concatenate(wanted) if len(wanted) > 1 else wanted[0]})[0]
        out: list = [None] * len(batch)
        r = 0
        for (lo, hi, js), h in zip(groups, hs):
            t = h.shape[1] if all_logits else 1
            for j in js:
                out[j] = logits[r:r + t]
                r += t
        if self.events is not None:
            self.events(Event("step", t_step, time.perf_counter(), self._step, nbytes=len(ids_all)))
        self._step += 1
        return out

    def _moe_out(self, layer: int, y: np.ndarray) -> np.ndarray:
        """What a MoE layer adds to its residual: the experts' weighted sum y [T, H] times the
        residual multiplier, or (post-norm layouts) its RMSNorm (float32, as the layer graphs')."""
        a = self.arch
        if not a.post_norm:
            return a.residual_multiplier * y
        var = np.mean(y * y, axis=-1, keepdims=True)
        return (y / np.sqrt(var + np.float32(a.norm_eps))) * self._layer_tensors[layer][MOE_OUT_NORM]

    def _moe(self, layer: int, x: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Expert-major: each chosen expert runs once on all tokens routed to it."""
        experts, weights = route(logits, self.arch, self._layer_tensors[layer].get(SELECTION_BIAS))
        self.last_routing.append(experts)
        if self.budgeted is not None:
            pred = self._predict(layer, x)
            if self._pending_pred is not None:
                actual = set(np.unique(experts).tolist())
                self.recall[0] += len(actual & self._pending_pred)
                self.recall[1] += len(actual)
            self._pending_pred = {e for _, e in pred} or None
            return self.budgeted.compute(layer, x, experts, weights, pred)
        # one grouped call for every chosen expert (backends.base.run_group), then one weighted sum
        rows = ExpertRows.of(experts)
        xs = rows.gather(x)
        handles = [self._experts[(layer, e)] for e in rows.ids.tolist()]
        return rows.combine(run_group(self.backend, handles, xs, rows.bounds, np.empty_like(xs)),
                            weights)

    def _predict(self, layer: int, x: np.ndarray) -> tuple:
        """The next MoE layer's experts, from its router applied to this layer's MoE input."""
        nxt = [i for i in self.arch.moe_layers if i > layer]
        t = self._layer_tensors[nxt[0]] if nxt else {}
        if ROUTER_WEIGHT not in t:
            return ()
        logits = x @ t[ROUTER_WEIGHT]
        if ROUTER_BIAS in t:
            logits = logits + t[ROUTER_BIAS]
        experts, _ = route(logits, self.arch, t.get(SELECTION_BIAS))
        return tuple((nxt[0], int(e)) for e in np.unique(experts))

    def batch(self, prefill_chunk: int = PREFILL_CHUNK):
        """A continuous batch over this runtime's ``max_batch`` KV slots (``runtime.batch.Batch``)."""
        from edgemoe.runtime.batch import Batch
        return Batch(self, prefill_chunk)

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

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Text -> ids; special tokens written in the text (``</s>``) become their ids. ``add_bos``:
        prepend BOS (default: as the package's tokenizer does; False for a rendered chat template,
        which writes its own)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if (self.pkg.add_bos if add_bos is None else add_bos) and self.arch.bos_token_id is not None:
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
        logits = self.forward(ids, last_only=True)[-1]
        for i in range(max_new_tokens):
            nxt = sampler(logits)
            yield nxt
            if (stop_at_eos and nxt in self.arch.eos_token_ids) or i == max_new_tokens - 1:
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

