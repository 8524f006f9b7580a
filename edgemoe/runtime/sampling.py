"""Next-token choice from logits (numpy): greedy, or sampling with temperature, top-k, top-p and
min-p, after optional presence / frequency penalties (OpenAI's: subtracted from the logits of the
tokens generated so far); and the log-probabilities a client may ask for."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgemoe.errors import ConfigError


@dataclass(frozen=True)
class SamplingConfig:
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0        # 0 = off
    top_p: float = 1.0    # 1 = off
    min_p: float = 0.0    # 0 = off: drop tokens whose probability is below min_p x the top one's
    presence_penalty: float = 0.0    # subtracted once from each token generated so far
    frequency_penalty: float = 0.0   # subtracted per occurrence
    seed: int | None = None

    def __post_init__(self):
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}; use greedy for 0")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ConfigError(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ConfigError(f"{name} must be in [-2, 2] (as in the OpenAI API), "
                                  f"got {getattr(self, name)}")

    @property
    def penalised(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty)


class Sampler:
    def __init__(self, cfg: SamplingConfig):
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)

    def penalise(self, logits: np.ndarray, history) -> np.ndarray:
        """logits [V] minus the presence / frequency penalties of the ids in ``history``."""
        c = self.cfg
        if not c.penalised or not len(history):
            return logits
        ids, counts = np.unique(np.asarray(history, dtype=np.int64), return_counts=True)
        out = logits.astype(np.float32, copy=True)
        out[ids] -= c.frequency_penalty * counts + c.presence_penalty
        return out

    def __call__(self, logits: np.ndarray, history=()) -> int:
        """logits [V] (and the ids generated so far, for the penalties) -> token id."""
        c = self.cfg
        logits = self.penalise(logits, history)
        if c.greedy:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / c.temperature
        if c.top_k:
            kth = np.partition(z, -c.top_k)[-c.top_k]
            z = np.where(z < kth, -np.inf, z)
        p = np.exp(z - z.max())
        p /= p.sum()
        if c.min_p > 0:
            p = np.where(p < c.min_p * p.max(), 0, p)
            p /= p.sum()
        if c.top_p < 1:
            order = np.argsort(-p)
            keep = np.cumsum(p[order]) - p[order] < c.top_p
            mask = np.zeros_like(p, dtype=bool)
            mask[order[keep]] = True
            p = np.where(mask, p, 0)
            p /= p.sum()
        return int(self.rng.choice(len(p), p=p))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """[V] -> log-probabilities [V] (float64: the tail's logprobs stay finite)."""
    z = logits.astype(np.float64)
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def token_logprobs(logits: np.ndarray, token: int, top: int = 0) -> tuple[float, list[tuple[int, float]]]:
    """The model's log-probability of ``token`` and its ``top`` most likely tokens (id, logprob),
    best first, from the raw logits [V] (before penalties and sampling settings, as OpenAI reports)."""
    lp = log_softmax(logits)
    best = []
    if top > 0:
        idx = np.argpartition(-lp, min(top, lp.size) - 1)[:top]
        idx = idx[np.argsort(-lp[idx], kind="stable")]
        best = [(int(i), float(lp[i])) for i in idx]
    return float(lp[token]), best
