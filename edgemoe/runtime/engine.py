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
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgemoe.backends import get_backend
from edgemoe.errors import ConfigError, PackageError
from edgemoe.package.reader import Package
from edgemoe.package.graph_io import DENSE_OUTPUTS, MOE_OUTPUTS
from edgemoe.runtime.expert_store import ExpertStore
from edgemoe.runtime.kv_cache import KVCache
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


class Runtime:
    """Run a package: ``forward(ids) -> logits`` and ``generate(prompt, ...)``.

    Parameters
    ----------
    package : path of an .edgemoe package (or an open ``Package``)
    level : bits every expert computes at (a level of the package's ladder); default the highest
    backend : expert backend, "ort" (default) or "reference" (numpy ground truth)
    threads : onnxruntime intra-op threads for the dense graphs
    exact : experts compute in fp32 (slow; bit-faithful to the numpy reference) instead of onnxruntime's
        int8-activation fast path
    """

    def __init__(self, package, level: int | None = None, backend: str = "ort", threads: int = 1,
                 exact: bool = False):
        self.pkg = package if isinstance(package, Package) else Package(package)
        self.arch = self.pkg.arch
        self.level = self.pkg.quant.top_bits if level is None else int(level)
        self.pkg.quant.level_index(self.level)  # ConfigError naming the valid levels
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        for rel in [self.pkg.embed_graph, self.pkg.head_graph, *self.pkg.layer_graphs]:
            self.pkg.read_file(rel)  # sha256 check of the graph; its .data is checked below
            data = rel + ".data"
            if data in self.pkg.files:
                self.pkg.read_file(data)
        load = lambda rel: ort.InferenceSession(str(self.pkg.path(rel)), so,  # noqa: E731
                                                providers=["CPUExecutionProvider"])
        self._embed = load(self.pkg.embed_graph)
        self._head = load(self.pkg.head_graph)
        self._layers = [load(rel) for rel in self.pkg.layer_graphs]
        self.backend = get_backend(backend, **({"exact": exact} if backend == "ort" else {}))
        self.store = ExpertStore(self.pkg)
        self._experts: dict[tuple[int, int], object] = {}
        self._buffers: dict[tuple[int, int], np.ndarray] = {}
        for key in sorted(self.pkg.experts):
            buf = self.store.read(*key, self.level)
            self._buffers[key] = buf
            self._experts[key] = self.backend.load(self.pkg, *key, self.level, buf)
        self.kv = KVCache(self.arch)
        self._tokenizer = None
        self.last_routing: list[np.ndarray] = []   # per MoE layer: experts [T, k] of the last step

    # ---- model ----
    def reset(self):
        """Forget the KV cache (start a new sequence)."""
        self.kv.reset()

    def forward(self, token_ids) -> np.ndarray:
        """Run the new tokens through the model, extending the KV cache.

        Parameters
        ----------
        token_ids : sequence of int, length T >= 1

        Returns
        -------
        logits : float32 [T, vocab]
        """
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ConfigError("forward needs at least one token id")
        if ids.min() < 0 or ids.max() >= self.arch.vocab_size:
            raise ConfigError(f"token ids must be in 0..{self.arch.vocab_size - 1}")
        past, t = self.kv.length, ids.size
        if past + t > self.arch.max_position:
            raise ConfigError(f"sequence of {past + t} tokens exceeds the model's max_position "
                              f"{self.arch.max_position}; reset() or shorten the prompt")
        hidden = self._embed.run(None, {"ids": ids})[0]
        cos, sin = rope_tables(self.arch, np.arange(past, past + t))
        mask = causal_mask(past, t)
        self.last_routing = []
        for i, sess in enumerate(self._layers):
            pk, pv = self.kv.get(i)
            feeds = {"hidden": hidden, "cos": cos, "sin": sin, "mask": mask, "past_k": pk, "past_v": pv}
            if self.arch.is_moe_layer(i):
                residual, moe_in, logits, k, v = sess.run(MOE_OUTPUTS, feeds)
                hidden = residual + self.arch.residual_multiplier * self._moe(i, moe_in, logits)
            else:
                hidden, k, v = sess.run(DENSE_OUTPUTS, feeds)
            self.kv.put(i, k, v)
        self.kv.advance(t)
        return self._head.run(None, {"hidden": hidden})[0]

    def _moe(self, layer: int, x: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Expert-major: each chosen expert runs once on all tokens routed to it."""
        experts, weights = route(logits, self.arch)              # [T, k], [T, k]
        self.last_routing.append(experts)
        out = np.zeros_like(x)
        for e in np.unique(experts):
            rows, slot = np.nonzero(experts == e)
            y = self.backend.run(self._experts[(layer, int(e))], x[rows])
            out[rows] += weights[rows, slot, None] * y
        return out

    # ---- text ----
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.pkg.tokenizer_file is None:
                raise PackageError(f"{self.pkg.root} has no tokenizer; pass token ids instead of text, "
                                   f"or export from a checkpoint folder that has tokenizer.json")
            from tokenizers import Tokenizer
            self._tokenizer = Tokenizer.from_str(self.pkg.read_file(self.pkg.tokenizer_file).decode())
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
                                stats={"expert_bytes_read": self.store.bytes_read, "level": self.level})

    def close(self):
        self.store.close()


def open_runtime(path: str | Path, **kw) -> Runtime:
    return Runtime(path, **kw)
