"""Which kernels an expert needs, and their calling convention; pure Python (no TVM import).

One kernel per (matrix, level, token bucket), all with the same signature::

    x [T, K] f32, plane_1 .. plane_p [N, G, gs*w_j/8] u8, scale [N, G], offset [N, G], y [T, N] f32

(the planes, scales and offsets are views of the record prefix; level ``bits`` uses planes
``1..p``), plus one SwiGLU kernel per bucket: ``gu [T, 2I] f32 -> h [T, I] f32`` with
``h = silu(gu[:, :I]) * gu[:, I:]``. ``T`` is a bucket of :data:`BUCKETS`; the backend pads
a token count up to the next bucket and cuts longer runs into chunks of the largest one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from edgemoe.errors import ConfigError

BUCKETS = (1, 4, 16)   # token counts a kernel is built for: decode (GEMV) and two prefill GEMMs


@dataclass(frozen=True)
class PlaneRun:
    """Consecutive planes of one width, merged into one integer code before any float math.

    ``code = sum_j q_j << (last - level_j)`` over the run's planes, and the level-k code is
    ``c_k = sum_runs code * 2**(bits - last)``; so a run costs one multiply-add per weight.
    """

    width: int                       # bits per code in each of the run's planes
    planes: tuple[tuple[int, int], ...]   # (0-based plane index, level bits the plane completes)
    last: int                        # level bits of the run's last plane


def plane_runs(quant, bits: int) -> tuple[PlaneRun, ...]:
    """The planes level ``bits`` reads, grouped into runs of equal width (ladder 2,4,8 at 8 bits:
    planes 1+2 (2-bit, merged) and plane 3 (4-bit))."""
    idx = quant.level_index(bits)
    runs: list[PlaneRun] = []
    for p in range(idx + 1):
        w, lvl = quant.plane_widths[p], quant.ladder[p]
        if runs and runs[-1].width == w:
            runs[-1] = PlaneRun(w, runs[-1].planes + ((p, lvl),), lvl)
        else:
            runs.append(PlaneRun(w, ((p, lvl),), lvl))
    return tuple(runs)


@dataclass(frozen=True)
class KernelSpec:
    """One compiled function: a quantized mat-vec/mat-mat of one matrix at one level, or SwiGLU."""

    name: str
    op: str              # "matmul" | "swiglu"
    tokens: int          # T (a bucket)
    n: int               # output features (matmul) / I (swiglu)
    k: int               # input features (matmul) / 2I (swiglu)
    matrix: str = ""     # "gate_up" | "down" (matmul only)
    bits: int = 0        # level (matmul only)
    activations: str = "float32"   # "int8": x quantized per group in the kernel (see int8_matmuls)
    isa: str = ""                  # the byte dot product of an int8 kernel (int8dot.ISAS)

    def args(self, quant, words: bool = False, half_bits: bool = False) -> list[tuple[str, tuple[int, ...], str]]:
        """(name, shape, dtype) of every argument in call order.

        ``words``: planes as little-endian uint32 words ``[N, G, gs*w/32]`` (the same bytes; GPU
        kernels load 32 bits at a time). ``half_bits``: float16 scales as their uint16 bit
        patterns (for OpenCL devices without ``cl_khr_fp16``).
        """
        if self.op == "swiglu":
            return [("gu", (self.tokens, self.k), "float32"), ("h", (self.tokens, self.n), "float32")]
        gs = quant.group_size
        g = -(-self.k // gs)
        sdt = quant.scale_dtype
        if half_bits and sdt == "float16":
            sdt = "uint16"
        unit, pdt = (32, "uint32") if words else (8, "uint8")
        planes = [(f"plane{p + 1}", (self.n, g, gs * quant.plane_widths[p] // unit), pdt)
                  for p in range(quant.level_index(self.bits) + 1)]
        return [("x", (self.tokens, self.k), "float32"), *planes,
                ("scale", (self.n, g), sdt), ("offset", (self.n, g), sdt),
                ("y", (self.tokens, self.n), "float32")]


def int8_group_lanes(quant, k: int) -> int:
    """V: groups per vector of the int8 kernels' offset term (16, or all the groups of a short row)."""
    return min(16, k // quant.group_size)


def int8_fits(quant, k: int) -> bool:
    """Whether a matrix with ``k`` inputs suits the int8 GEMV: whole groups; every plane row made of
    whole 64-byte blocks, each holding whole groups of whole 4-byte lanes; and a whole number of
    16-group vectors (or fewer than 16 groups) for the offset term."""
    if k % quant.group_size:
        return False
    return (k // quant.group_size) % int8_group_lanes(quant, k) == 0 and all(
        k * w % 512 == 0 and (quant.group_size * w // 8) in (4, 8, 16, 32, 64)
        for w in quant.plane_widths)


def int8_matmuls(specs: list[KernelSpec], quant, isa: str) -> list[KernelSpec]:
    """``specs`` with every matmul that ``int8_fits`` and whose codes suit ``isa``'s byte dot
    product (``int8dot.int8_isa``) switched to int8 activations; the calling convention is
    unchanged."""
    from edgemoe.backends.tvm.int8dot import codes_fit

    def fits(ks):
        return ks.op == "matmul" and int8_fits(quant, ks.k) and all(
            codes_fit(isa, r.width * len(r.planes)) for r in plane_runs(quant, ks.bits))
    return [replace(ks, activations="int8", isa=isa) if fits(ks) else ks for ks in specs]


def kernel_name(matrix: str, bits: int, tokens: int) -> str:
    return f"{matrix}_k{bits}_t{tokens}"


def kernel_specs(hidden: int, intermediate: int, quant, buckets=BUCKETS) -> list[KernelSpec]:
    """Every kernel an expert of this shape and ladder needs, for each token bucket."""
    if quant.scheme != "matryoshka":
        raise ConfigError(f"the tvm backend computes on matryoshka bit planes; this package's experts "
                          f"are {quant.scheme!r}; run it with backend 'planes' or 'ort'")
    mats = {"gate_up": (2 * intermediate, hidden), "down": (hidden, intermediate)}
    out = []
    for t in buckets:
        out.append(KernelSpec(f"swiglu_t{t}", "swiglu", t, intermediate, 2 * intermediate))
        for m, (n, k) in mats.items():
            for bits in quant.ladder:
                out.append(KernelSpec(kernel_name(m, bits, t), "matmul", t, n, k, m, bits))
    return out


def chunks(tokens: int, buckets=BUCKETS) -> list[tuple[int, int, int]]:
    """Split ``tokens`` rows into ``(start, stop, bucket)`` pieces: full chunks of the largest
    bucket, then the smallest bucket that holds the rest (padded)."""
    top = buckets[-1]
    out, start = [], 0
    while tokens - start > top:
        out.append((start, start + top, top))
        start += top
    rest = tokens - start
    if rest > 0:
        out.append((start, tokens, next(b for b in buckets if b >= rest)))
    return out
