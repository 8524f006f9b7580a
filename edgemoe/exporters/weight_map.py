"""Resolve a family's declarative weight map against a checkpoint, one layer at a time.

Every tensor read is recorded; after the export, any tensor left over (or missing, or of the wrong
shape) fails loudly, so a family adapter can never silently drop or invent weights.
"""
from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np

from edgemoe.arch import MoEArch
from edgemoe.errors import CheckpointError
from edgemoe.exporters.checkpoint import Checkpoint
from edgemoe.exporters.families.base import FamilyAdapter
from edgemoe.exporters.fp8 import FP8_DTYPES, SCALE_SUFFIX, block_size, dequantize_blocks
from edgemoe.package.onnx_util import RowBlocks


def half_split_order(head_dim: int, rotary: int) -> np.ndarray:
    """Row order within one head that turns GPT-J RoPE (pairs 2j, 2j+1 rotate together by
    frequency j) into the half-split form (j, j + R/2): even rotary dims, odd ones, then the rest.
    q.k is unchanged when q and k are permuted alike; v is not touched."""
    return np.concatenate([np.arange(0, rotary, 2), np.arange(1, rotary, 2),
                           np.arange(rotary, head_dim)])


def interleaved_to_half(w: dict[str, np.ndarray], arch: MoEArch) -> dict[str, np.ndarray]:
    """q, k (and their biases and per-head or whole-projection norm weights) with each head's rows
    in :func:`half_split_order`."""
    order = half_split_order(arch.head_dim, arch.rope_dim)
    w = dict(w)
    for role, heads in (("q", arch.num_heads), ("k", arch.num_kv_heads)):
        rows = (np.arange(heads)[:, None] * arch.head_dim + order[None]).reshape(-1)
        for r in (role, f"{role}_bias"):
            if r in w:
                w[r] = w[r][rows]
        norm = w.get(f"{role}_norm")
        if norm is not None:
            w[f"{role}_norm"] = norm[order] if norm.shape[0] == arch.head_dim else norm[rows]
    return w


def interleaved_latent_to_half(w: dict[str, np.ndarray], arch: MoEArch) -> dict[str, np.ndarray]:
    """MLA's GPT-J RoPE parts (the last ``rope_dim`` rows of each q head, of q_proj or q_b_proj,
    and of kv_a_proj_with_mqa after the latent) in half-split order."""
    dr = arch.rope_dim
    rope = half_split_order(dr, dr)
    w = dict(w)
    d = arch.head_dim
    head = np.concatenate([np.arange(d - dr), d - dr + rope])
    rows = (np.arange(arch.num_heads)[:, None] * d + head[None]).reshape(-1)
    for role in ("q", "q_b"):
        if role in w:
            w[role] = w[role][rows]
    r = arch.kv_lora_rank
    kv = np.concatenate([np.arange(r), r + rope])
    for role in ("kv_a", "kv_a_bias"):
        if role in w:
            w[role] = w[role][kv]
    return w


def _alts(t) -> tuple[str, ...]:
    return (t,) if isinstance(t, str) else tuple(t)


class WeightMap:
    def __init__(self, ckpt: Checkpoint, adapter: FamilyAdapter, arch: MoEArch):
        self.ckpt, self.adapter, self.arch = ckpt, adapter, arch
        self.used: set[str] = set()

    # ---- primitives ----
    def _find(self, role: str, alts: tuple[str, ...], required: bool = True) -> str | None:
        for name in alts:
            if name in self.ckpt.tensors:
                return name
        if required:
            raise CheckpointError(f"weight map: tensor for role {role!r} is missing (looked for "
                                  f"{', '.join(alts)}); the checkpoint does not match its "
                                  f"model_type {self.arch.family!r}, or is incomplete")
        return None

    def _read(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        arr = self.ckpt.read(name)
        if shape is not None and tuple(arr.shape) != tuple(shape):
            raise CheckpointError(f"tensor {name} has shape {tuple(arr.shape)}, expected {tuple(shape)} "
                                  f"from config.json; the config and weights disagree")
        self.used.add(name)
        scale = self._fp8_scale(name)
        if scale is not None:     # block-scaled FP8: dequantized as it is read
            self.used.add(scale)
            arr = dequantize_blocks(arr, self.ckpt.read(scale), block=block_size(self.ckpt.config))
        return arr

    def _fp8_scale(self, name: str) -> str | None:
        """The block scales of an FP8 tensor (``<name>_scale_inv``), or None; an FP8 tensor
        without them is refused (its values alone are not the weights)."""
        if self.ckpt.stored_dtype(name) not in FP8_DTYPES:
            return None
        scale = name + SCALE_SUFFIX
        if scale not in self.ckpt.tensors:
            raise CheckpointError(f"FP8 tensor {name} has no {scale} block scales beside it; "
                                  f"re-download the checkpoint (it is incomplete)")
        return scale

    def _expected(self, role: str) -> tuple[int, ...] | None:
        a = self.arch
        H, D, E = a.hidden_size, a.head_dim, a.num_experts
        q, kv = a.num_heads * D, a.num_kv_heads * D
        Is, Id = a.shared_intermediate_size, a.dense_intermediate_size
        if a.attention == "mla":
            r, dr, qr, dv = a.kv_lora_rank, a.rope_dim, a.q_lora_rank, a.v_head_dim
            mla = {"q_a": (qr, H), "q_a_bias": (qr,), "q_a_norm": (qr,), "q_b": (q, qr),
                   "kv_a": (r + dr, H), "kv_a_bias": (r + dr,), "kv_a_norm": (r,),
                   "kv_b": (a.num_heads * (D - dr + dv), r), "o": (H, a.num_heads * dv)}
            if role in mla:
                return mla[role]
        return {"qkv": (q + 2 * kv, H), "router_bias": (E,), "router_selection_bias": None,
                "sinks": (a.num_heads,),
                "attn_out_norm": (H,), "mlp_out_norm": (H,), "shared_gate_up": (2 * Is, H),
                "shared_gate_bias": (Is,), "shared_up_bias": (Is,), "shared_down_bias": (H,),
                "mlp_gate_bias": (Id,), "mlp_up_bias": (Id,), "mlp_down_bias": (H,),
                "embed": (a.vocab_size, H), "lm_head": (a.vocab_size, H), "final_norm": (H,),
                "final_norm.bias": (H,), "lm_head.bias": (a.vocab_size,), "attn_norm": (H,),
                "attn_norm.bias": (H,), "mlp_norm": (H,), "mlp_norm.bias": (H,),
                "q": (q, H), "k": (kv, H), "v": (kv, H), "o": (H, q), "q_bias": (q,),
                "k_bias": (kv,), "v_bias": (kv,), "o_bias": (H,),
                "q_norm": (D,) if a.qk_norm == "per_head" else (q,),
                "k_norm": (D,) if a.qk_norm == "per_head" else (kv,),
                "router": (E, H), "shared_gate": (a.shared_intermediate_size, H),
                "shared_up": (a.shared_intermediate_size, H),
                "shared_down": (H, a.shared_intermediate_size), "shared_expert_gate": (1, H),
                "mlp_gate": (a.dense_intermediate_size, H), "mlp_up": (a.dense_intermediate_size, H),
                "mlp_down": (H, a.dense_intermediate_size)}.get(role)

    def _read_roles(self, names: dict[str, tuple[str, ...]]) -> dict[str, np.ndarray]:
        w = {role: self._read(self._find(role, alts), self._expected(role))
             for role, alts in names.items()}
        return self._canonical(w)

    def _canonical(self, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Fused tensors split into their roles, the selection bias flat, and (interleaved RoPE)
        q/k rows permuted to the half-split order the graphs use."""
        a = self.arch
        if "qkv" in w:       # [q | k | v] rows
            q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
            w["q"], w["k"], w["v"] = np.split(w.pop("qkv"), [q, q + kv])
        if "shared_gate_up" in w:
            w["shared_gate"], w["shared_up"] = np.split(w.pop("shared_gate_up"), 2)
        if "router_selection_bias" in w:
            b = w["router_selection_bias"]
            if b.size != a.num_experts:
                raise CheckpointError(f"the router's selection bias has {b.size} values for "
                                      f"{a.num_experts} experts; the config and weights disagree")
            w["router_selection_bias"] = b.reshape(a.num_experts).astype(np.float32)
        if self.adapter.rope_interleaved(self.ckpt.config):
            w = interleaved_latent_to_half(w, a) if a.attention == "mla" else interleaved_to_half(w, a)
        return w

    # ---- public ----
    def _rows(self, name: str, shape: tuple[int, ...]) -> RowBlocks:
        """A 2-D tensor as row blocks, read only as the blocks are consumed (shape checked now)."""
        got = tuple(self.ckpt.shape(name))
        if got != tuple(shape):
            raise CheckpointError(f"tensor {name} has shape {got}, expected {tuple(shape)} "
                                  f"from config.json; the config and weights disagree")
        self.used.add(name)
        scale = self._fp8_scale(name)
        if scale is None:
            return RowBlocks(got, self.ckpt.dtype(name), lambda: self.ckpt.row_blocks(name))
        self.used.add(scale)
        bn, bk = block_size(self.ckpt.config)

        def blocks():       # whole blocks of rows, each dequantized with its scale rows
            s = self.ckpt.read(scale)
            step = max(bn, (16 << 20) // max(1, 4 * got[1]) // bn * bn)
            for r0 in range(0, got[0], step):
                r1 = min(got[0], r0 + step)
                yield dequantize_blocks(self.ckpt.read_rows(name, r0, r1), s, (r0, r1), (bn, bk))
        return RowBlocks(got, np.dtype(np.float32), blocks)

    def embed_rows(self) -> RowBlocks:
        """The token embedding [V, H], streamed in row blocks (never held whole)."""
        names = self.adapter.global_names(self.arch)
        return self._rows(self._find("embed", names["embed"]), self._expected("embed"))

    def head_weights(self) -> dict:
        """final_norm(.bias), lm_head(.bias); ``lm_head`` [V, H] as row blocks (never held whole),
        of the embedding when the head is tied."""
        names = self.adapter.global_names(self.arch)
        lm = names.pop("lm_head")
        embed = names.pop("embed")
        w = self._read_roles(names)
        name = self._find("lm_head", lm, required=not self.arch.tie_word_embeddings)
        w["lm_head"] = self._rows(name or self._find("embed", embed), self._expected("lm_head"))
        return w

    def global_weights(self) -> dict[str, np.ndarray]:
        """embed, final_norm(.bias), lm_head(.bias) at once; a tied head reuses the embedding.

        ``export`` uses :meth:`embed_rows` and :meth:`head_weights` instead, which stream the two
        vocabulary-sized matrices rather than holding them.
        """
        names = self.adapter.global_names(self.arch)
        lm = names.pop("lm_head")
        w = self._read_roles(names)
        name = self._find("lm_head", lm, required=not self.arch.tie_word_embeddings)
        w["lm_head"] = self._read(name, self._expected("lm_head")) if name else w["embed"]
        return w

    def layer_weights(self, i: int) -> dict[str, np.ndarray]:
        return self._read_roles(self.adapter.layer_names(self.arch, i))

    def _fused_name(self, role: str, alts, required: bool = True) -> list[str] | None:
        """The tensor(s) of a fused expert tensor: [name], or an MXFP4 pair [name_blocks,
        name_scales] (tried after each plain alternative)."""
        for name in alts:
            if name in self.ckpt.tensors:
                return [name]
            if name + "_blocks" in self.ckpt.tensors:
                return [name + "_blocks", self._find(f"{role} scales", (name + "_scales",))]
        if required:
            self._find(role, tuple(alts))        # raises, naming what was looked for
        return None

    def _expert_source(self, i: int) -> tuple[str, list]:
        """("fused", [gate_up, down, (gate_up_bias, down_bias)]: each a list of 1 tensor name, or
        2 for MXFP4) or ("per_expert", [(gate, up, down) for each expert])."""
        t = self.adapter.expert_names(self.arch)
        per, fused = t.get("per_expert") or {}, t.get("fused") or {}
        if fused:
            fmt = lambda key: tuple(n.format(i=i) for n in _alts(fused[key]))  # noqa: E731
            gu = self._fused_name("experts.gate_up", fmt("gate_up"), required=not per)
            if gu is not None:
                src = [gu, self._fused_name("experts.down", fmt("down"))]
                if self.arch.expert_bias:
                    src += [[self._find("experts.gate_up_bias", fmt("gate_up_bias"))],
                            [self._find("experts.down_bias", fmt("down_bias"))]]
                return "fused", src
        names = []
        for e in range(self.arch.num_experts):
            n = tuple(per[k].format(i=i, e=e) for k in ("gate", "up", "down"))
            for role, name in zip(("gate", "up", "down"), n):
                self._find(f"expert {e} {role}", (name,))
            names.append(n)
        return "per_expert", names

    def planned_names(self) -> set[str]:
        """Every tensor the export will read, resolved without reading any (to fail before writing)."""
        a, names = self.arch, set()
        roles = dict(self.adapter.global_names(a))
        lm = roles.pop("lm_head")
        for i in range(a.num_layers):
            roles.update({f"{r}@{i}": alts for r, alts in self.adapter.layer_names(a, i).items()})
        for role, alts in roles.items():
            names.add(self._find(role.split("@")[0], alts))
        head = self._find("lm_head", lm, required=not a.tie_word_embeddings)
        if head:
            names.add(head)
        for i in a.moe_layers:
            _, src = self._expert_source(i)
            names.update(n for group in src for n in group)
        return names | {n + SCALE_SUFFIX for n in names if self._fp8_scale(n)}

    def _fused(self, names: list[str], shape: tuple[int, int, int]) -> np.ndarray:
        """A fused expert tensor as [E, out, in] float32: MXFP4 blocks dequantized (stored
        [E, out, in/32, 16]), or a plain tensor, transposed when the adapter's layout is
        input-major ([E, in, out], gpt-oss's bf16)."""
        e, n, k = shape
        if len(names) == 2:
            from edgemoe.exporters.mxfp4 import dequantize_mxfp4
            blocks = self._read(names[0], (e, n, k // 32, 16))
            return dequantize_mxfp4(blocks, self._read(names[1], (e, n, k // 32)))
        if self.adapter.fused_input_major:
            return self._read(names[0], (e, k, n)).transpose(0, 2, 1)
        return self._read(names[0], shape)

    def experts(self, i: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yield (e, {"gate_up": [2I, H], "down": [H, I]}) for every expert of MoE layer i."""
        a = self.arch
        H, I, E = a.hidden_size, a.intermediate_size, a.num_experts
        kind, src = self._expert_source(i)
        if kind == "fused":
            gu, down = self._fused(src[0], (E, 2 * I, H)), self._fused(src[1], (E, H, I))
            biases = ({"gate_up.bias": self._read(src[2][0], (E, 2 * I)),
                       "down.bias": self._read(src[3][0], (E, H))} if a.expert_bias else {})
            for e in range(E):
                mats = {"gate_up": gu[e], "down": down[e], **{k: b[e] for k, b in biases.items()}}
                yield e, self._gate_first(mats)
            return
        for e, (gate, up, down) in enumerate(src):
            yield e, {"gate_up": np.concatenate([self._read(gate, (I, H)), self._read(up, (I, H))]),
                      "down": self._read(down, (H, I))}

    def _gate_first(self, mats: dict) -> dict:
        """gate_up rows (and bias) as [gate; up]: gpt-oss interleaves them (gate even, up odd)."""
        if not self.adapter.gate_up_interleaved:
            return mats
        order = np.concatenate([np.arange(0, 2 * self.arch.intermediate_size, 2),
                                np.arange(1, 2 * self.arch.intermediate_size, 2)])
        return {k: (v[order] if k.startswith("gate_up") else v) for k, v in mats.items()}

    def leftovers(self, used: set[str] | None = None) -> list[str]:
        used = self.used if used is None else used
        ignored = self.adapter.ignored(self.ckpt.config)
        return sorted(n for n in self.ckpt.tensors if n not in used and not ignored.search(n))

    def check_complete(self, used: set[str] | None = None):
        """Raise if any checkpoint tensor is not (to be) read: ``used`` defaults to what was read."""
        left = self.leftovers(used)
        if left:
            raise CheckpointError(
                f"{len(left)} tensor(s) in the checkpoint are not in the {self.adapter.name} weight map: "
                f"{left[:6]}{' ...' if len(left) > 6 else ''}; the export would silently drop them. "
                f"Is this really a {self.adapter.name} checkpoint, or does it need a new adapter?")
