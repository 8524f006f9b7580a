"""The report's numbers for one measured run, from its events, step boundaries and runtime stats."""
from __future__ import annotations

from collections import defaultdict


def _mix_shares(mix: dict) -> dict:
    total = sum(mix.values()) or 1
    return {str(b): n / total for b, n in sorted(mix.items(), key=lambda kv: int(kv[0]))}


def summarize(rec) -> dict:
    """Tokens/s (prefill, decode), time to first token, memory, stalls, hits, bytes/token, levels.

    Decode rates count only the decode forward steps; bytes per token are the expert bytes read
    (prefetches included) while decode steps ran, per decode token; the stall share is the time the
    compute thread waited for reads over the decode time.
    """
    steps = rec.steps
    dec = [(t0, t1) for kind, _, t0, t1 in steps if kind == "decode"]
    pre = [(n, t1 - t0) for kind, n, t0, t1 in steps if kind == "prefill"]
    dec_s = sum(t1 - t0 for t0, t1 in dec)
    decode_idx = {i for i, s in enumerate(steps) if s[0] == "decode"}
    wait = sum(e[2] - e[1] for e in rec.events if e[0] == "wait" and e[3] in decode_idx)
    spans = sorted(dec)
    read_bytes = 0
    j = 0
    for e in sorted((e for e in rec.events if e[0] == "read"), key=lambda e: e[1]):
        while j < len(spans) and spans[j][1] < e[1]:
            j += 1
        if j < len(spans) and spans[j][0] <= e[1] <= spans[j][1]:
            read_bytes += e[7]
    st, plan = rec.stats, rec.plan
    held = plan["dense"] + plan["kv_cache"] + plan["work"] + st.get("cache_peak_bytes", 0)
    out = {
        "budget": rec.config["budget"], "policy": rec.config["policy"],
        "level": rec.config["level"] if rec.config["level"] is not None else "top",
        "budget_bytes": plan["budget"], "expert_cache_bytes": plan["experts"],
        "decode_tokens_per_s": len(dec) / dec_s if dec_s else None,
        "prefill_tokens_per_s": sum(n for n, _ in pre) / sum(s for _, s in pre) if pre else None,
        "time_to_first_token_s": sum(s for _, s in pre) / len(pre) if pre else None,
        "runtime_peak_bytes": held, "cache_peak_bytes": st.get("cache_peak_bytes"),
        "peak_rss_bytes": rec.rss["peak"], "rss_base_bytes": rec.rss["base"],
        "peak_rss_decode_bytes": rec.rss.get("peak_decode"),
        "outside_peak_rss_bytes": rec.rss.get("outside_peak"),
        "stall_share": wait / dec_s if dec_s else 0.0,
        "hit_rate": st.get("hit_rate"), "bytes_per_token": read_bytes / len(dec) if dec else 0.0,
        "level_mix": _mix_shares(st.get("level_mix") or {}),
        "prefetch_recall": st.get("prefetch_recall"),
        "decode_steps": len(dec), "prompts": len(pre),
        "perplexity": rec.eval["perplexity"] if rec.eval else None,
    }
    return out


def decode_step_timeline(rec, which: str = "median") -> tuple[int, list]:
    """One measured decode step as (index among decode steps, segments): the step whose duration is
    the median (``which='median'``) or the longest. Segments are (lane, kind, t0, t1, label) with
    times relative to the step start; reads get one lane per overlapping I/O slot."""
    steps = [(i, s) for i, s in enumerate(rec.steps) if s[0] == "decode"]
    if not steps:
        return -1, []
    order = sorted(range(len(steps)), key=lambda k: steps[k][1][3] - steps[k][1][2])
    k = order[len(order) // 2] if which == "median" else order[-1]
    idx, (_, _, t0, t1) = steps[k]
    segs = []
    for e in rec.events:
        kind, a, b, step, layer, expert, bits = e[:7]
        if kind in ("dense", "compute", "wait") and step == idx:
            label = f"L{layer}" if kind == "dense" else f"L{layer}E{expert}@{bits}"
            segs.append(("compute", {"compute": "expert"}.get(kind, kind), a - t0, b - t0, label))
    busy = sorted((a, b) for lane, _, a, b, _ in segs)
    cur = 0.0
    for a, b in busy:                     # the compute thread's gaps: routing, policy, bookkeeping
        if a > cur:
            segs.append(("compute", "overhead", cur, a, ""))
        cur = max(cur, b)
    if t1 - t0 > cur:
        segs.append(("compute", "overhead", cur, t1 - t0, ""))
    lanes = defaultdict(float)            # lane -> end of its last read
    for e in sorted((e for e in rec.events if e[0] == "read" and e[2] > t0 and e[1] < t1),
                    key=lambda e: e[1]):
        lane = next((n for n in sorted(lanes) if lanes[n] <= e[1]), len(lanes))
        lanes[lane] = e[2]
        segs.append((f"I/O {lane + 1}", "read", e[1] - t0, e[2] - t0, f"L{e[4]}E{e[5]}"))
    return k, segs
