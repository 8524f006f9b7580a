"""Host timings of a measured run, as the forecast's timing model consumes them.

From the run's events (dense, compute, wait, read) and its step boundaries:

- ``dense_decode``: seconds of each layer's dense graph at decode (mean over decode steps), and
  ``dense_slope``: extra seconds per extra token of a prefill step (all layers).
- ``overhead_decode``: the rest of a decode step (embedding, head, routing, the policy, Python):
  step - dense - expert compute - waits, fitted per decode step as ``overhead_decode +
  overhead_per_read * reads`` (each read costs the compute thread some bookkeeping), and
  ``overhead_slope`` per extra prefill token.
- ``compute``: seconds of one expert call at decode per level (mean over calls that no read
  overlapped), and ``compute_slope`` per extra token routed to the call.

Means, not medians: a rate is tokens over summed time, so the slow tail counts.
- ``read_latency`` / ``read_bandwidth``: a line through the read durations against their bytes
  (a read's event spans the pread and the sha256 check).
- ``read_dispatch``: seconds from the end of a layer's dense graph to the start of its first demand
  read, beyond the policy's overhead (the I/O thread needs the GIL, which the compute thread holds
  between numpy calls; mean over decode layers that read).
- ``contention``: compute seconds lost per second of overlapping read (the I/O threads share the
  CPU with the compute thread); None when the run had too little overlap to tell.
"""
from __future__ import annotations

import statistics
from collections import defaultdict

import numpy as np

MIN_OVERLAP_S = 2e-3          # below this much overlapped read time, contention is not estimated


def _mean(xs, default=0.0):
    return float(statistics.fmean(xs)) if xs else default


def _overlap(t0: float, t1: float, spans: list[tuple[float, float]]) -> float:
    """Seconds of [t0, t1] covered by the union of ``spans`` (sorted by start)."""
    total, cur0, cur1 = 0.0, None, None
    for a, b in spans:
        a, b = max(a, t0), min(b, t1)
        if b <= a:
            continue
        if cur1 is None or a > cur1:
            if cur1 is not None:
                total += cur1 - cur0
            cur0, cur1 = a, b
        else:
            cur1 = max(cur1, b)
    if cur1 is not None:
        total += cur1 - cur0
    return total


def host_timing(rec) -> dict:
    """The timing model's host parameters from a ``RunRecord`` (see the module docstring)."""
    steps = rec.steps                                        # [kind, tokens, t0, t1]
    ev = defaultdict(list)
    for e in rec.events:
        ev[e[0]].append(e)
    per_step = defaultdict(lambda: {"dense": 0.0, "compute": 0.0, "wait": 0.0})
    dense_layer = defaultdict(list)
    decode = {i for i, s in enumerate(steps) if s[0] == "decode"}
    for _, t0, t1, step, layer, *_ in ev["dense"]:
        per_step[step]["dense"] += t1 - t0
        if step in decode:
            dense_layer[layer].append(t1 - t0)
    for kind in ("compute", "wait"):
        for _, t0, t1, step, *_ in ev[kind]:
            per_step[step][kind] += t1 - t0
    overhead = {i: (s[3] - s[2]) - sum(per_step[i].values()) for i, s in enumerate(steps)}
    reads = sorted((e[1], e[2]) for e in ev["read"])
    n_reads = _reads_per_step(steps, reads)
    dense_dec = _mean([per_step[i]["dense"] for i in decode])
    over_dec, per_read = _line([n_reads[i] for i in decode], [overhead[i] for i in decode])
    pre = [i for i, s in enumerate(steps) if s[1] > 1]
    dense_slope = _mean([(per_step[i]["dense"] - dense_dec) / (steps[i][1] - 1) for i in pre])
    over_slope = _mean([(overhead[i] - over_dec - per_read * n_reads[i]) / (steps[i][1] - 1)
                        for i in pre])

    calls = defaultdict(list)
    overlapped = []
    for _, t0, t1, step, layer, expert, bits, tokens in ev["compute"]:
        if step not in decode:
            continue
        ov = _overlap(t0, t1, reads)
        (overlapped.append((bits, t1 - t0, ov)) if ov > 0 else calls[bits].append(t1 - t0))
    for bits, dur, _ in overlapped:            # a level only ever computed under reads
        if bits not in calls:
            calls[bits].append(dur)
    compute = {int(b): _mean(v) for b, v in calls.items()}
    slope = _mean([((t1 - t0) - compute.get(bits, t1 - t0)) / (tokens - 1)
                     for _, t0, t1, step, _, _, bits, tokens in ev["compute"] if tokens > 1])
    excess = sum(d - compute[b] for b, d, _ in overlapped)
    ov_total = sum(o for _, _, o in overlapped)
    contention = float(np.clip(excess / ov_total, 0.0, 3.0)) if ov_total >= MIN_OVERLAP_S else None

    dispatch = _dispatch(rec.events, decode, over_dec / max(len(dense_layer), 1))
    latency, bandwidth = _read_line([(e[7], e[2] - e[1]) for e in ev["read"]])
    return {"dense_decode_layers": {str(k): _mean(v) for k, v in sorted(dense_layer.items())},
            "dense_decode": dense_dec, "dense_slope": max(dense_slope, 0.0),
            "overhead_decode": over_dec, "overhead_per_read": per_read,
            "overhead_slope": max(over_slope, 0.0),
            "compute": {str(b): v for b, v in sorted(compute.items())},
            "compute_slope": max(slope, 0.0), "read_latency": latency, "read_bandwidth": bandwidth,
            "reads": len(ev["read"]), "read_sizes": _read_sizes(ev["read"]), "read_dispatch": dispatch,
            "contention": contention, "io_threads": 2}


def _dispatch(events, decode: set, overhead: float) -> float:
    """Mean delay from a layer's dense end (+ its share of overhead) to its first demand read."""
    dense_end = {(e[3], e[4]): e[2] for e in events if e[0] == "dense"}
    wanted = {(e[3], e[4], e[5]) for e in events if e[0] == "compute" and e[3] in decode}
    first: dict = {}
    step_of = sorted((t, s, layer) for (s, layer), t in dense_end.items() if s in decode)
    ends = [t for t, _, _ in step_of]
    for e in events:
        if e[0] != "read":
            continue
        k = int(np.searchsorted(ends, e[1])) - 1      # the last dense graph that ended before it
        if k < 0:
            continue
        _, s, layer = step_of[k]
        if e[4] == layer and (s, layer, e[5]) in wanted:
            first[(s, layer)] = min(first.get((s, layer), e[1]), e[1])
    delays = [t - dense_end[k] - overhead for k, t in first.items()]
    return max(_mean(delays), 0.0)     # the mean: a few reads starved of the GIL for a whole
                                       # expert call make most of the stall


def _read_sizes(reads) -> dict:
    """Mean seconds of a read per chunk size (the package's chunks come in a few sizes)."""
    by = defaultdict(list)
    for e in reads:
        by[e[7]].append(e[2] - e[1])
    return {str(n): _mean(v) for n, v in sorted(by.items()) if len(v) >= 5}


def _reads_per_step(steps, reads) -> dict:
    """Reads that started while each step ran (prefetches included)."""
    out = {}
    starts = sorted(a for a, _ in reads)
    for i, (_, _, t0, t1) in enumerate(steps):
        out[i] = int(np.searchsorted(starts, t1, "right") - np.searchsorted(starts, t0, "left"))
    return out


def _line(x, y) -> tuple[float, float]:
    """(intercept >= 0, slope >= 0) of y against x; slope 0 when x does not vary."""
    if not y:
        return 0.0, 0.0
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0:
        return max(float(y.mean()), 0.0), 0.0
    b, a = np.polyfit(x, y, 1)
    if b < 0:
        return max(float(y.mean()), 0.0), 0.0
    return max(float(a), 0.0), float(b)


def _read_line(points: list[tuple[int, float]]) -> tuple[float | None, float | None]:  # noqa: D401
    """(latency s, bytes/s) of a least-squares line duration = latency + bytes / bandwidth."""
    if not points:
        return None, None
    by_size = defaultdict(list)
    for n, d in points:
        by_size[n].append(d)
    xs = sorted(by_size)
    ys = [_mean(by_size[n]) for n in xs]
    if len(xs) == 1:                      # one size: no slope to fit; charge it all to bandwidth
        return 0.0, xs[0] / max(ys[0], 1e-9)
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    if b <= 0:                            # noise: durations do not grow with size
        return float(np.mean(ys)), None   # None: no bandwidth term
    return float(max(a, 0.0)), float(1.0 / b)
