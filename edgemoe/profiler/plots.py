"""PNG plots of a profile (matplotlib, an optional extra, imported only here and only when asked).

- ``throughput_memory.png``: decode tokens/s and peak memory against the budget, one line per policy
  (measured: solid; forecast for a device: dashed).
- ``timeline_<policy>-<budget>.png``: one decode step, lane by lane: the compute thread (dense graphs,
  expert kernels, policy overhead, waits) against the I/O threads' reads; the waits are the bubbles
  the scheduler fights.
- ``heat.png``: per layer and expert, the share of tokens routed there and the share of its calls
  that had to wait for a read.
"""
from __future__ import annotations

from edgemoe.errors import ConfigError

COLORS = {"dense": "#4C72B0", "expert": "#55A868", "overhead": "#BBBBBB", "wait": "#C44E52",
          "read": "#DD8452"}


def require_matplotlib():
    try:
        import matplotlib
    except ImportError as e:
        raise ConfigError("plots need matplotlib: pip install 'edgemoe[plot]' (or run without --out "
                          "/ with --no-plots)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _mib(n):
    return n / 2**20


def throughput_memory(report: dict, path) -> None:
    plt = require_matplotlib()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    dev = report["device"]["name"]
    by_policy: dict = {}
    for r in report["rows"]:
        by_policy.setdefault(r["policy"], []).append(r)
    for i, (policy, rows) in enumerate(sorted(by_policy.items())):
        color = f"C{i}"
        for key, style, label in (("measured", "-o", f"{policy} measured (this machine)"),
                                  ("forecast", "--s", f"{policy} forecast ({dev})")):
            pts = sorted((r[key]["budget_bytes"], r[key]) for r in rows if r.get(key))
            if not pts:
                continue
            xs = [_mib(b) for b, _ in pts]
            ax1.plot(xs, [m["decode_tokens_per_s"] or 0 for _, m in pts], style, color=color, label=label)
            peak = "peak_rss_bytes" if key == "measured" else "peak_rss_bytes_estimate"
            ax2.plot(xs, [_mib(m["runtime_peak_bytes"]) for _, m in pts], style, color=color,
                     label=f"{policy} {key}: runtime-held")
            if any(m.get(peak) for _, m in pts):
                ax2.plot(xs, [_mib(m.get(peak) or 0) for _, m in pts], style, color=color, alpha=0.45,
                         label=f"{policy} {key}: process RSS" + (" (est.)" if key == "forecast" else ""))
    lim = [min(ax2.get_xlim()[0], ax2.get_ylim()[0]), max(ax2.get_xlim()[1], ax2.get_ylim()[1])]
    ax2.plot(lim, lim, ":", color="black", label="= budget")
    ax1.set(xlabel="budget (MiB)", ylabel="decode tokens/s", title="Decode throughput against budget")
    ax2.set(xlabel="budget (MiB)", ylabel="peak memory (MiB)", title="Peak memory against budget")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timeline(panels: list[tuple[str, list]], path, title: str) -> None:
    """``panels``: (caption, segments) with segments (lane, kind, t0 s, t1 s, label)."""
    plt = require_matplotlib()
    from matplotlib.patches import Patch
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 1.6 + 1.2 * sum(
        len({s[0] for s in segs}) or 1 for _, segs in panels)), squeeze=False)
    for ax, (caption, segs) in zip(axes[:, 0], panels):
        lanes = sorted({s[0] for s in segs}, key=lambda n: (n != "compute", n))
        for y, lane in enumerate(lanes):
            for _, kind, t0, t1, _ in (s for s in segs if s[0] == lane):
                ax.barh(y, (t1 - t0) * 1e3, left=t0 * 1e3, height=0.7, color=COLORS.get(kind, "grey"),
                        edgecolor="white", linewidth=0.3)
        ax.set_yticks(range(len(lanes)), lanes)
        ax.invert_yaxis()
        ax.set_xlabel("ms since the step started")
        stall = sum(t1 - t0 for _, k, t0, t1, _ in segs if k == "wait")
        end = max((s[3] for s in segs), default=0)
        ax.set_title(f"{caption}: step {end * 1e3:.2f} ms, stalled {stall * 1e3:.2f} ms", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.legend(handles=[Patch(color=c, label=k) for k, c in COLORS.items()], loc="upper right",
               ncol=5, fontsize=8)
    fig.suptitle(title, x=0.01, ha="left", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heat(trace_path, path) -> None:
    import numpy as np

    from edgemoe.runtime.trace import read_trace
    plt = require_matplotlib()
    _, records = read_trace(trace_path)
    layers = sorted({r["layer"] for r in records})
    n_exp = 1 + max((e for r in records for e in r["experts"]), default=0)
    routed = np.zeros((len(layers), n_exp))
    calls = np.zeros_like(routed)
    missed = np.zeros_like(routed)
    for r in records:
        i = layers.index(r["layer"])
        toks = r.get("tokens") or [1] * len(r["experts"])
        for e, t, hit in zip(r["experts"], toks, r["hits"]):
            routed[i, e] += t
            calls[i, e] += 1
            missed[i, e] += not hit
    share = routed / np.maximum(routed.sum(axis=1, keepdims=True), 1)
    miss = np.divide(missed, calls, out=np.full_like(missed, np.nan), where=calls > 0)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 1.5 + 0.45 * len(layers)))
    panels = ((a, share, "share of each layer's tokens routed to the expert", "viridis", share.max() or 1),
              (b, miss, "share of the expert's calls that waited for a read (grey: never called)",
               "magma", 1))
    import matplotlib
    for ax, data, title, name, vmax in panels:
        cmap = matplotlib.colormaps[name].with_extremes(bad="#d9d9d9")
        im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=0, vmax=vmax)
        ax.set(xlabel="expert", ylabel="layer", title=title)
        ax.set_yticks(range(len(layers)), [str(x) for x in layers])
        ax.set_xticks(range(n_exp))
        ax.title.set_fontsize(9)
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.suptitle(f"expert heat from {trace_path.name if hasattr(trace_path, 'name') else trace_path}",
                 x=0.01, ha="left", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(report: dict, timelines: dict, heat_trace, stage) -> list[str]:
    """Write every plot of ``report`` into the staging folder; returns their relative names."""
    from edgemoe.profiler.sweep import slug
    names = ["throughput_memory.png"]
    throughput_memory(report, stage.path(names[0]))
    dev = report["device"]["name"]
    for (policy, budget), tl in timelines.items():
        panels = []
        if tl.get("measured"):
            panels.append(("measured on this machine", tl["measured"]))
        if tl.get("forecast"):
            panels.append((f"forecast for {dev}", tl["forecast"]))
        if not panels:
            continue
        name = f"timeline_{policy}-{slug(budget)}.png"
        timeline(panels, stage.path(name), f"one decode step (median-length step #{tl['step']}), "
                                           f"policy {policy}, budget {budget}")
        names.append(name)
    if heat_trace is not None:
        heat(heat_trace, stage.path("heat.png"))
        names.append("heat.png")
    return names
