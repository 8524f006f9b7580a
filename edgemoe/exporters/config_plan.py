"""A size-only export plan from config.json alone: what a package would weigh, before downloading.

The family adapter's weight map names every tensor; their shapes follow from the config (the same
shapes the real export checks the checkpoint against), so the plan's file sizes, per-level expert
bytes and parameter counts are those of the real export without a byte of weights.
"""
from __future__ import annotations

from pathlib import Path

from edgemoe.arch import MoEArch
from edgemoe.exporters.checkpoint import Checkpoint, TensorInfo
from edgemoe.exporters.families.base import FamilyAdapter
from edgemoe.exporters.weight_map import WeightMap, _alts

_NONE = Path("")


def _put(ckpt: Checkpoint, name: str, shape: tuple[int, ...]):
    n = 2
    for d in shape:
        n *= d
    ckpt.tensors[name] = TensorInfo(name, _NONE, "BF16", tuple(int(d) for d in shape), 0, n)


def fill_planned_tensors(ckpt: Checkpoint, adapter: FamilyAdapter, arch: MoEArch):
    """Name every tensor of ``arch`` in ``ckpt.tensors`` (first alternative of each role) with the
    shape the weight map expects; bf16, as most releases are."""
    wm = WeightMap(ckpt, adapter, arch)
    H, I, E = arch.hidden_size, arch.intermediate_size, arch.num_experts
    special = {"router_selection_bias": (E,)}
    roles = dict(adapter.global_names(arch))
    if arch.tie_word_embeddings:
        roles.pop("lm_head")
    for role, alts in roles.items():
        _put(ckpt, alts[0], special.get(role) or wm._expected(role))
    for i in range(arch.num_layers):
        for role, alts in adapter.layer_names(arch, i).items():
            _put(ckpt, alts[0], special.get(role) or wm._expected(role))
    names = adapter.expert_names(arch)
    for i in arch.moe_layers:
        per, fused = names.get("per_expert") or {}, names.get("fused") or {}
        if per:
            for e in range(E):
                for key, shape in (("gate", (I, H)), ("up", (I, H)), ("down", (H, I))):
                    _put(ckpt, per[key].format(i=i, e=e), shape)
        else:
            _put(ckpt, _alts(fused["gate_up"])[0].format(i=i),
                 (E, H, 2 * I) if adapter.fused_input_major else (E, 2 * I, H))
            _put(ckpt, _alts(fused["down"])[0].format(i=i), (E, I, H) if adapter.fused_input_major else (E, H, I))
            if arch.expert_bias:
                _put(ckpt, _alts(fused["gate_up_bias"])[0].format(i=i), (E, 2 * I))
                _put(ckpt, _alts(fused["down_bias"])[0].format(i=i), (E, H))


def parameter_counts(ckpt: Checkpoint, arch: MoEArch) -> tuple[int, int]:
    """(total, active per token) parameters of the planned tensors: active counts k of E routed
    experts in each MoE layer."""
    total = 0
    for t in ckpt.tensors.values():
        n = 1
        for d in t.shape:
            n *= d
        total += n
    per_expert = 3 * arch.hidden_size * arch.intermediate_size
    idle = len(arch.moe_layers) * (arch.num_experts - arch.top_k) * per_expert
    return total, total - idle
