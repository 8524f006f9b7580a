"""Perplexity and bits per byte of a package on a text file (non-overlapping windows, KV reset each)."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from edgemoe.errors import ConfigError


@dataclass(frozen=True)
class EvalResult:
    tokens: int           # predicted tokens
    bytes: int            # UTF-8 bytes of the text those tokens cover
    nll_nats: float       # mean negative log-likelihood per predicted token
    perplexity: float
    bits_per_byte: float
    windows: int
    seconds: float
    level: int

    def to_dict(self) -> dict:
        return asdict(self)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def evaluate(rt, text: str, window: int = 256, max_tokens: int | None = None,
             progress=None) -> EvalResult:
    """Score ``text`` with runtime ``rt``: each window of ``window`` tokens predicts its last window-1.

    Parameters
    ----------
    rt : edgemoe.Runtime (its tokenizer encodes ``text``)
    window : tokens per window (capped by the model's max_position)
    max_tokens : score only the first this many tokens (None = all)
    progress : optional callback (done_windows, total_windows)
    """
    if not text.strip():
        raise ConfigError("the evaluation text is empty; pass a file with some text")
    window = min(int(window), rt.arch.max_position)
    if window < 2:
        raise ConfigError("window must be at least 2 tokens")
    ids = rt.encode(text)
    if max_tokens:
        ids = ids[:max_tokens]
    starts = list(range(0, max(len(ids) - 1, 1), window))
    nll, count = 0.0, 0
    t0 = time.perf_counter()
    for w, s in enumerate(starts):
        chunk = ids[s:s + window]
        if len(chunk) < 2:
            continue
        rt.reset()
        logp = _log_softmax(rt.forward(chunk))                 # [n, V]
        targets = np.asarray(chunk[1:])
        nll -= float(logp[np.arange(len(targets)), targets].sum())
        count += len(targets)
        if progress:
            progress(w + 1, len(starts))
    n_bytes = len(rt.decode(ids).encode("utf-8"))
    mean = nll / max(count, 1)
    # bits per byte: total bits over the bytes of the scored text (first token of each window unscored)
    return EvalResult(tokens=count, bytes=n_bytes, nll_nats=mean, perplexity=math.exp(mean),
                      bits_per_byte=nll / math.log(2) / max(n_bytes, 1), windows=len(starts),
                      seconds=time.perf_counter() - t0, level=rt.level)
