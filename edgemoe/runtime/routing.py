"""Router logits -> (experts, weights) per token: the one general router of ``RouterSpec`` (numpy).

The runtime, the next-layer prediction and the budgeted path all call :func:`route`; a routing
trace records its output, which the replay reads back. Ties break toward the lower expert index,
as torch.topk does on CPU.
"""
from __future__ import annotations

import numpy as np

from edgemoe.arch import MoEArch, RouterSpec


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def _sqrtsoftplus(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.logaddexp(np.float32(0), x)).astype(np.float32)


_SCORES = {"softmax": _softmax, "sigmoid": _sigmoid, "sqrtsoftplus": _sqrtsoftplus}


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """indices [T, k] of the k largest, descending (stable: lower index first on ties)."""
    return np.argsort(-x, axis=-1, kind="stable")[:, :k]


def _sparsemixer_step(scores: np.ndarray, masked: np.ndarray, eps: float):
    """One PhiMoE step: pick argmax of ``masked``, weight = its softmax over the thresholded set."""
    top = masked.max(axis=-1, keepdims=True)                       # [T, 1]
    idx = masked.argmax(axis=-1)[:, None]
    factor = np.maximum(np.abs(scores), top)
    drop = (top - scores) / factor > 2 * eps
    gated = np.where(drop, -np.inf, masked)
    return idx, np.take_along_axis(_softmax(gated), idx, axis=-1)


def _sparsemixer(logits: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    i1, w1 = _sparsemixer_step(logits, logits, eps)
    masked = logits.copy()
    np.put_along_axis(masked, i1, -np.inf, axis=-1)
    i2, w2 = _sparsemixer_step(logits, masked, eps)
    return np.concatenate([i1, i2], -1), np.concatenate([w1, w2], -1)


def _group_limit(choice: np.ndarray, r: RouterSpec) -> np.ndarray:
    """choice [T, E] with every expert outside the ``topk_group`` best groups set to -inf."""
    t, e = choice.shape
    groups = choice.reshape(t, r.n_group, e // r.n_group)
    if r.group_score == "max":
        gscore = groups.max(axis=-1)
    else:   # the sum of each group's two best (DeepSeek-V3)
        gscore = -np.sort(-groups, axis=-1)[..., :2].sum(axis=-1)
    keep = np.zeros((t, r.n_group), dtype=bool)
    np.put_along_axis(keep, _topk(gscore, r.topk_group), True, axis=-1)
    return np.where(np.repeat(keep, e // r.n_group, axis=-1), choice, -np.inf)


def route(logits: np.ndarray, arch: MoEArch, selection_bias: np.ndarray | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """logits [T, E] -> experts [T, k] int64, weights [T, k] float32 (times the router's scaling).

    ``selection_bias`` [E]: the layer's bias added to the scores for the choice only (required
    when ``arch.router.selection_bias``; read from the layer graph by the runtime)."""
    r, k = arch.router, arch.top_k
    logits = logits.astype(np.float32, copy=False)
    if r.score == "sparsemixer":
        idx, w = _sparsemixer(logits, r.jitter)
    elif r.topk_first:
        idx = _topk(logits, k)
        w = _SCORES[r.score](np.take_along_axis(logits, idx, axis=-1))
    else:
        scores = _SCORES[r.score](logits)
        choice = scores
        if r.selection_bias:
            if selection_bias is None:
                raise ValueError("this router chooses on biased scores: pass the layer's selection_bias")
            choice = scores + selection_bias.astype(np.float32, copy=False)
        if r.n_group > 1:
            choice = _group_limit(choice, r)
        idx = _topk(choice, k)
        w = np.take_along_axis(scores, idx, axis=-1)
    if r.renormalize:
        den = w.sum(axis=-1, keepdims=True) + np.float32(r.renorm_eps)
        w = w / np.maximum(den, np.float32(r.renorm_min))
    return idx.astype(np.int64), (w * np.float32(r.scaling)).astype(np.float32)
