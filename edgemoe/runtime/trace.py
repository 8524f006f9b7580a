"""Routing traces: one JSON line per (step, layer) with the experts chosen, the levels used, hits,
bytes read and compute time, after a header line that names the package. Policies (belady, static)
and the profiler replay them."""
from __future__ import annotations

import json
from pathlib import Path

from edgemoe.errors import ConfigError

TRACE_VERSION = 1


class TraceWriter:
    def __init__(self, path, package_id: str, meta: dict | None = None):
        self.path = Path(path)
        try:
            self.f = open(self.path, "w")
        except OSError as e:
            raise ConfigError(f"cannot write the trace to {self.path}: {e.strerror}; choose a "
                              f"writable path") from e
        self.f.write(json.dumps({"edgemoe_trace": TRACE_VERSION, "package": package_id,
                                 **(meta or {})}) + "\n")

    def layer(self, step, layer, experts, tokens, bits, hits, nbytes, compute_s):
        rec = {"step": step, "layer": layer, "experts": [int(e) for e in experts],
               "bits": [int(b) for b in bits], "hits": [bool(h) for h in hits],
               "bytes": int(nbytes), "compute_s": round(compute_s, 6)}
        if tokens is not None:
            rec["tokens"] = [int(t) for t in tokens]
        self.f.write(json.dumps(rec) + "\n")

    def close(self):
        self.f.close()


def read_trace(path) -> tuple[dict, list[dict]]:
    """(header, records) of a trace file, with a clear error for anything else."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read trace {path}: {e.strerror}") from e
    try:
        header = json.loads(lines[0])
        records = [json.loads(x) for x in lines[1:] if x.strip()]
    except (IndexError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not an edgemoe routing trace ({e}); record one with --trace") from e
    if header.get("edgemoe_trace") != TRACE_VERSION:
        raise ConfigError(f"{path} is not an edgemoe routing trace (version {TRACE_VERSION}); "
                          f"record one with `edgemoe run --trace FILE`")
    return header, records


def accesses(records: list[dict]) -> list[tuple[int, int, tuple[int, ...]]]:
    """The (step, layer, experts) sequence a trace recorded, in execution order."""
    return [(r["step"], r["layer"], tuple(r["experts"])) for r in records]


def heat_profile(records: list[dict]) -> dict[tuple[int, int], float]:
    """Routing counts per (layer, expert): the profile the static policy fixes levels from."""
    heat: dict = {}
    for r in records:
        for i, e in enumerate(r["experts"]):
            w = r["tokens"][i] if "tokens" in r else 1
            heat[(r["layer"], e)] = heat.get((r["layer"], e), 0) + w
    return heat
