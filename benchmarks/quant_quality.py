"""Matryoshka level-k error against direct min-max round-to-nearest at k bits, on expert shapes.

For each expert shape, weight distribution, group size and scale dtype, quantize once and report,
per level of the ladder: relative Frobenius error ||W_k - W|| / ||W|| of matryoshka level k and of
direct group-wise min-max RTN at k bits (float32 scale and minimum), their ratio, and the bytes per
weight an expert record costs at that level (scales, offsets and page padding included; computed
from the full, unsampled shape).

Weights are synthetic and i.i.d., so a row subset of a large matrix (``rows``) measures the same
errors as the whole matrix in a fraction of the time.

    python benchmarks/quant_quality.py [--quick] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

try:
    import edgemoe.quant  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgemoe.quant import QuantSpec, dequantize, direct_minmax_rtn, parse_ladder, quantize, record_layout

# (model, matrix, full shape [N, K], rows measured, rows measured with --quick)
SHAPES = [
    ("OLMoE-1B-7B", "gate", (1024, 2048), 1024, 256),
    ("OLMoE-1B-7B", "down", (2048, 1024), 2048, 256),
    ("Mixtral-8x7B", "gate", (14336, 4096), 2048, 128),
    ("Mixtral-8x7B", "down", (4096, 14336), 512, 32),
]
DISTS = ("gauss", "student_t4")
STD = 0.02
LIMIT = 1.02  # a level may be at most this much worse than direct RTN at the same bits


def synth(dist: str, shape: tuple[int, int], seed: int, std: float = STD) -> np.ndarray:
    """Weights with the given std: Gaussian, or Student-t with 4 degrees of freedom (heavy tails)."""
    rng = np.random.default_rng(seed)
    if dist == "gauss":
        return (rng.standard_normal(shape) * std).astype(np.float32)
    return (rng.standard_t(4, shape) * (std / np.sqrt(2.0))).astype(np.float32)  # Var t(4) = 2


def rel_err(a: np.ndarray, w: np.ndarray) -> float:
    return float(np.linalg.norm(a - w) / np.linalg.norm(w))


def run(quick: bool, group_sizes, scale_dtypes, ladder, std: float = STD) -> list[dict]:
    rows = []
    for si, (model, matrix, full, n_rows, n_quick) in enumerate(SHAPES):
        n = n_quick if quick else n_rows
        for di, dist in enumerate(DISTS):
            w = synth(dist, (n, full[1]), seed=100 * si + di, std=std)
            for gs in group_sizes:
                rtn = {b: rel_err(direct_minmax_rtn(w, b, gs), w) for b in ladder}
                for sdt in scale_dtypes:
                    spec = QuantSpec(ladder=ladder, group_size=gs, scale_dtype=sdt)
                    qm = quantize(w, spec)
                    lay = record_layout({matrix: full}, spec)
                    for bits in ladder:
                        err = rel_err(dequantize(qm, bits), w)
                        bpw = lay.prefix_length(bits) / (full[0] * full[1])
                        rows.append(
                            dict(
                                model=model, matrix=matrix, shape=list(full), rows=n, dist=dist,
                                group_size=gs, scale_dtype=sdt, bits=bits, err_matryoshka=err,
                                err_rtn=rtn[bits], ratio=err / rtn[bits], record_bytes_per_weight=bpw,
                                record_bits_per_weight=8 * bpw,
                                # direct RTN stored with a float16 scale and minimum per group
                                rtn_bits_per_weight=bits + 32 / gs,
                            )
                        )
    return rows


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'model':13} {'mat':4} {'dist':10} {'gs':>3} {'scale':7} {'bits':>4} {'matryoshka':>10} "
        f"{'rtn':>8} {'ratio':>6} {'rec B/w':>7} {'rec bit/w':>9} {'rtn bit/w':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        flag = "  <-- above %.2fx" % LIMIT if r["ratio"] > LIMIT else ""
        print(
            f"{r['model']:13} {r['matrix']:4} {r['dist']:10} {r['group_size']:>3} {r['scale_dtype']:7} "
            f"{r['bits']:>4} {r['err_matryoshka']:>10.5f} {r['err_rtn']:>8.5f} {r['ratio']:>6.3f} "
            f"{r['record_bytes_per_weight']:>7.4f} {r['record_bits_per_weight']:>9.3f} "
            f"{r['rtn_bits_per_weight']:>9.3f}{flag}"
        )


def summary(rows: list[dict], ladder) -> dict:
    out = {}
    for sdt in sorted({r["scale_dtype"] for r in rows}):
        for b in ladder:
            rs = [r["ratio"] for r in rows if r["bits"] == b and r["scale_dtype"] == sdt]
            out[f"{sdt}/k{b}"] = {"min_ratio": min(rs), "max_ratio": max(rs)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rows per matrix (seconds instead of ~a minute)")
    ap.add_argument("--json", type=Path, help="write the rows and a summary to this JSON file")
    ap.add_argument("--group-sizes", default="64,128", help="comma-separated group sizes (default 64,128)")
    ap.add_argument("--scale-dtypes", default="float16,float32", help="comma-separated scale dtypes")
    ap.add_argument("--std", type=float, default=STD,
                    help="weight std (default 0.02); below ~1e-3 float16 level-8 scales turn subnormal")
    ap.add_argument("--ladder", default="2,4,8", help="bit ladder (default 2,4,8)")
    args = ap.parse_args(argv)
    ladder = parse_ladder(args.ladder)
    gss = tuple(int(g) for g in args.group_sizes.split(","))
    sdts = tuple(s.strip() for s in args.scale_dtypes.split(","))
    t0 = time.perf_counter()
    rows = run(args.quick, gss, sdts, ladder, args.std)
    secs = time.perf_counter() - t0
    print_table(rows)
    summ = summary(rows, ladder)
    print("\nratio matryoshka / direct RTN, min..max over shapes and distributions:")
    for key, v in summ.items():
        print(f"  {key:12} {v['min_ratio']:.3f} .. {v['max_ratio']:.3f}")
    over = [r for r in rows if r["ratio"] > LIMIT]
    print(f"\n{len(over)} rows above {LIMIT}x (weight std {args.std}); {secs:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"ladder": list(ladder), "std": args.std, "limit": LIMIT, "seconds": secs,
                                         "summary": summ, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
