"""CPU byte dot products as TVM tensor intrinsics (for the int8-activation matmuls).

One intrinsic computes ``C[i] += sum_k A[i, k] * B[i, k]`` for 16 int32 lanes of 4 bytes: ``A``
[16, 4] uint8 weight codes (decoded into registers), ``B`` [16, 4] int8 quantized activations.

* x86 with AVX-512 VNNI: one ``vpdpbusd`` (unsigned x signed bytes).
* x86 with AVX2 only (Zen 1-3, Haswell to Skylake client; llama.cpp's Q8_0 path): per 32 bytes one
  ``vpmaddubsw`` (unsigned x signed bytes, adjacent pairs summed to int16, saturating) and one
  ``vpmaddwd`` by ones (adjacent int16 pairs to int32). A pair sum stays below 2^15 only while the
  codes are below 129: plane runs at most 7 bits wide (``codes_fit``).
* aarch64 with the dot-product extension (Cortex-A55/A76/A78, Raspberry Pi 5, RK3588, Jetson Orin
  CPUs): four ``sdot`` of 16 bytes. ``sdot`` multiplies signed bytes, so the codes must stay below
  128: every plane run of the level at most 7 bits wide (``codes_fit``).
* aarch64 without it (Cortex-A72/A53: Raspberry Pi 4, i.MX8): per 16 bytes two ``smull`` (8 signed
  byte products to int16 each), one ``addp`` (int16 pairs: at most 2 * 127 * 127, no overflow) and a
  pairwise widening accumulate (``saddlp`` + add, which LLVM emits as ``sadalp``). Codes below 128.

TVM's own x86 / ARM intrinsics broadcast one side (a dense GEMM's activation row); here both sides
vary per lane.
"""
from __future__ import annotations

from functools import lru_cache

LANES, LANE_BYTES = 16, 4
BLOCK = LANES * LANE_BYTES          # bytes of weight codes per intrinsic call
ISAS = ("avx512vnni", "avx2", "dotprod", "neon")


def int8_isa(target) -> str | None:
    """The byte dot product the llvm ``target`` (a tvm Target or dict) has, best first: x86
    "avx512vnni" or "avx2", aarch64 "dotprod" or "neon" (every aarch64 CPU has NEON); None for
    anything else (then the kernels keep float32 activations)."""
    import tvm
    from tvm.target import codegen

    if isinstance(target, dict):
        target = tvm.target.Target(target)
    if str(target.kind.name) != "llvm":
        return None
    arch = str(target.attrs.get("mtriple", "")).split("-")[0]
    if arch == "x86_64":
        for isa in ("avx512vnni", "avx2"):
            if codegen.target_has_features(isa, target):
                return isa
    if arch == "aarch64":
        return "dotprod" if codegen.target_has_features("dotprod", target) else "neon"
    return None


def codes_fit(isa: str, run_bits: int) -> bool:
    """Whether codes of ``run_bits`` bits can be the intrinsic's byte operand."""
    return run_bits <= (8 if isa == "avx512vnni" else 7)


def _desc():
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
    return desc


def _impl(isa: str):
    from tvm.script import tirx as T

    # Python values: the branches are taken when the script is parsed
    vnni, avx2, sdot = isa == "avx512vnni", isa == "avx2", isa == "dotprod"

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((16, 4), "uint8", offset_factor=1, scope="local"),
             b: T.Buffer((16, 4), "int8", offset_factor=1, align=1),
             c: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:16, 0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            if vnni:   # one vpdpbusd; LLVM 17+ spells the byte operands <64 x i8>
                c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), c.vload([0], "int32x16"),
                    a.vload([0, 0], "uint8x64"), b.vload([0, 0], "int8x64"), dtype="int32x16")
            elif avx2:  # 8 lanes (32 bytes) per vpmaddubsw + vpmaddwd by ones; codes < 129 (codes_fit)
                for h in T.unroll(2):
                    c[T.ramp(h * 8, 1, 8)] = c.vload([h * 8], "int32x8") + T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                        T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                            a.vload([h * 8, 0], "uint8x32"), b.vload([h * 8, 0], "int8x32"),
                            dtype="int16x16"),
                        T.broadcast(T.int16(1), 16), dtype="int32x8")
            elif sdot:  # 4 lanes (16 bytes) per sdot; codes < 128 (codes_fit)
                for q in T.unroll(4):
                    c[T.ramp(q * 4, 1, 4)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                        c.vload([q * 4], "int32x4"),
                        T.reinterpret(a.vload([q * 4, 0], "uint8x16"), dtype="int8x16"),
                        b.vload([q * 4, 0], "int8x16"), dtype="int32x4")
            else:       # NEON: 4 lanes per smull x2 + addp + sadalp; codes < 128 (codes_fit)
                for q in T.unroll(4):
                    c[T.ramp(q * 4, 1, 4)] = c.vload([q * 4], "int32x4") + T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"),
                        T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.addp.v8i16"),
                            T.call_llvm_pure_intrin(       # lanes 4q, 4q+1: bytes 0-7
                                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                                T.reinterpret(a.vload([q * 4, 0], "uint8x8"), dtype="int8x8"),
                                b.vload([q * 4, 0], "int8x8"), dtype="int16x8"),
                            T.call_llvm_pure_intrin(       # lanes 4q+2, 4q+3: bytes 8-15
                                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                                T.reinterpret(a.vload([q * 4 + 2, 0], "uint8x8"), dtype="int8x8"),
                                b.vload([q * 4 + 2, 0], "int8x8"), dtype="int16x8"),
                            dtype="int16x8"),
                        dtype="int32x4")
    return impl


@lru_cache(maxsize=None)
def register(isa: str) -> str:
    """Register the dot-product intrinsic of ``isa`` with TVM once; returns its name."""
    from tvm.s_tir import TensorIntrin

    if isa not in ISAS:
        raise ValueError(f"no int8 dot-product intrinsic for {isa!r}; known: {', '.join(ISAS)}")
    name = f"edgemoe_{isa}_16x4"
    TensorIntrin.register(name, _desc(), _impl(isa))
    return name


HSUM = "edgemoe_hsum_f32x16"


@lru_cache(maxsize=None)
def register_hsum() -> str:
    """``out[0] += sum_l a[l]`` over 16 float lanes as a halving tree of in-register shuffles (TVM
    would otherwise read the lanes back one by one); any target."""
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
