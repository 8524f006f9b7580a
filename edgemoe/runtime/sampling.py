"""Next-token choice from logits: greedy, or temperature / top-k / top-p sampling (numpy)."""
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
    seed: int | None = None

    def __post_init__(self):
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}; use greedy for 0")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


class Sampler:
    def __init__(self, cfg: SamplingConfig):
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """logits [V] -> token id."""
        c = self.cfg
        if c.greedy:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / c.temperature
        if c.top_k:
            kth = np.partition(z, -c.top_k)[-c.top_k]
            z = np.where(z < kth, -np.inf, z)
        p = np.exp(z - z.max())
        p /= p.sum()
        if c.top_p < 1:
            order = np.argsort(-p)
            keep = np.cumsum(p[order]) - p[order] < c.top_p
            mask = np.zeros_like(p, dtype=bool)
            mask[order[keep]] = True
            p = np.where(mask, p, 0)
            p /= p.sum()
        return int(self.rng.choice(len(p), p=p))
