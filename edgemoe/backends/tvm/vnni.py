"""The x86 AVX-512 VNNI dot product as a TVM tensor intrinsic (for the int8-activation GEMV).

``vpdpbusd`` multiplies 64 unsigned bytes by 64 signed bytes and adds each group of four products
into one of 16 int32 lanes: ``C[i] += sum_k A[i, k] * B[i, k]`` with ``A`` [16, 4] uint8 (weight
codes, decoded into registers) and ``B`` [16, 4] int8 (quantized activations). TVM's own x86
intrinsics broadcast one side (a dense GEMM's activation row); here both sides vary per lane.
"""
from __future__ import annotations

from functools import lru_cache

INTRIN = "edgemoe_vpdpbusd_16x4"
HSUM = "edgemoe_hsum_f32x16"
LANES, LANE_BYTES = 16, 4
BLOCK = LANES * LANE_BYTES          # bytes of weight codes per instruction


def cpu_has_vnni(target) -> bool:
    """True if the llvm ``target`` (a tvm Target or dict) has AVX-512 VNNI."""
    import tvm
    from tvm.target import codegen

    if isinstance(target, dict):
        target = tvm.target.Target(target)
    if str(target.kind.name) != "llvm" or not str(target.attrs.get("mtriple", "")).startswith("x86_64"):
        return False
    return bool(codegen.target_has_features("avx512vnni", target))


@lru_cache(maxsize=None)
def register() -> str:
    """Register the intrinsic with TVM once; returns its name."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((16, 4), "uint8", offset_factor=1, scope="local"),
             b: T.Buffer((16, 4), "int8", offset_factor=1, align=1),
             c: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:16, 0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vi, vk], "int32") * T.cast(b[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((16, 4), "uint8", offset_factor=1, scope="local"),
             b: T.Buffer((16, 4), "int8", offset_factor=1, align=1),
             c: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:16, 0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            # LLVM 17+ spells the byte operands <64 x i8>
            c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), c.vload([0], "int32x16"),
                a.vload([0, 0], "uint8x64"), b.vload([0, 0], "int8x64"), dtype="int32x16")

    TensorIntrin.register(INTRIN, desc, impl)
    return INTRIN


@lru_cache(maxsize=None)
def register_hsum() -> str:
    """``out[0] += sum_l a[l]`` over 16 float lanes as a halving tree of in-register shuffles (TVM
    would otherwise read the lanes back one by one)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((16,), "float32", offset_factor=1, scope="local"),
             out: T.Buffer((1,), "float32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(out[0:1], a[0:16])
            T.writes(out[0:1])
            for i in T.serial(0, 16):
                with T.sblock("update"):
                    vi = T.axis.remap("R", [i])
                    out[0] = out[0] + a[vi]

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((16,), "float32", offset_factor=1, scope="local"),
             out: T.Buffer((1,), "float32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(out[0:1], a[0:16])
            T.writes(out[0:1])
            v16 = a.vload([0], "float32x16")
            v8 = T.Shuffle([v16], [0, 1, 2, 3, 4, 5, 6, 7]) + T.Shuffle([v16], [8, 9, 10, 11, 12, 13, 14, 15])
            v4 = T.Shuffle([v8], [0, 1, 2, 3]) + T.Shuffle([v8], [4, 5, 6, 7])
            v2 = T.Shuffle([v4], [0, 1]) + T.Shuffle([v4], [2, 3])
            out[0] = out[0] + (T.Shuffle([v2], [0]) + T.Shuffle([v2], [1]))

    TensorIntrin.register(HSUM, desc, impl)
    return HSUM
