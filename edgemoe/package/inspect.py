"""A package's facts for `edgemoe inspect` (plain data; the CLI formats it)."""
from __future__ import annotations

from edgemoe.package import constants as C
from edgemoe.package.graph_io import kv_bytes_per_token
from edgemoe.package.reader import Package


def describe(path, verify: bool = False) -> dict:
    pkg = Package(path)
    info = {
        "package": str(pkg.root),
        "format_version": pkg.manifest[C.K_VERSION],
        "producer": pkg.manifest[C.K_PRODUCER],
        "arch": pkg.arch.to_dict(),
        "quant": pkg.quant.to_dict(),
        "dense": pkg.dense.to_dict(),
        "dense_bytes": pkg.dense_bytes(),
        "levels": [{"bits": b, "bytes": pkg.level_bytes(b),
                    "bytes_per_expert": pkg.layout.prefix_length(b)} for b in pkg.quant.ladder],
        "n_experts": len(pkg.experts),
        "n_files": len(pkg.files) + len({e.file for e in pkg.experts.values()}),
        "total_bytes": sum(v[C.K_LENGTH] for v in pkg.files.values())
        + sum((pkg.root / f).stat().st_size for f in {e.file for e in pkg.experts.values()}),
        "files": [{"path": k, "bytes": v[C.K_LENGTH]} for k, v in pkg.files.items()
                  if not k.startswith(C.EXPERTS_DIR + "/")],
        "tokenizer": pkg.tokenizer_file,
        # what each position of context costs, per KV cache type the package has graphs for
        "kv_bytes_per_token": {kv: kv_bytes_per_token(pkg.arch, kv) for kv in pkg.kv_layer_graphs},
    }
    if verify:
        info["verified_bytes"] = pkg.verify()
    return info
