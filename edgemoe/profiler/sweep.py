"""`edgemoe profile`: measured runs per budget and policy on this machine, forecasts for a device
profile, a recommendation for a target rate, and the report (JSON, PNGs, traces) in ``--out``.

Everything the user asked for is validated before the first run (device, budgets against the
package's minimum, the output folder, the prompts); the output folder is written only at the end.
"""
from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgemoe.devices import HOST, get_device
from edgemoe.errors import ConfigError
from edgemoe.profiler.forecast import forecast
from edgemoe.profiler.metrics import decode_step_timeline, summarize
from edgemoe.profiler.output import Staging, check_out
from edgemoe.profiler.recorder import RunConfig, record, run_isolated
from edgemoe.profiler.timing import host_timing
from edgemoe.profiler.workload import load_workload, package_id, write_meta
from edgemoe.runtime.budget import fmt_size

DEFAULT_PROMPTS = ("In the beginning",)
POLICIES = ("hebf", "lru", "lfu")


@dataclass(frozen=True)
class ProfileRequest:
    """What `edgemoe profile` was asked (see the CLI for each option's meaning)."""

    package: str | None = None
    device: str = HOST
    budgets: tuple = ("25%", "50%", "100%")
    policies: tuple = ("hebf",)
    level: object = None
    prompts: tuple = DEFAULT_PROMPTS
    new_tokens: int = 32
    context: int = 512
    eval_text: str | None = None
    eval_tokens: int = 1024
    out: str | None = None
    target_tps: float | None = None
    replay: str | None = None
    devices_dir: str | None = None
    isolate: bool = True
    plots: bool = True


def parse_budgets(text: str) -> tuple:
    items = tuple(b.strip() for b in str(text).split(",") if b.strip())
    if not items:
        raise ConfigError("--budgets needs at least one budget, e.g. 25%,50%,1GiB")
    return items


def parse_policies(text: str) -> tuple:
    items = tuple(p.strip() for p in str(text).split(",") if p.strip())
    bad = [p for p in items if p not in POLICIES]
    if bad or not items:
        raise ConfigError(f"unknown policy {', '.join(bad) or text!r}; choose from {', '.join(POLICIES)}")
    return items


def read_prompts(path) -> tuple:
    """One prompt per non-empty line; a line of integers is taken as token ids."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read --prompts {path}: {e.strerror}") from e
    out = []
    for line in (x.strip() for x in lines):
        if not line:
            continue
        ids = line.replace(",", " ").split()
        out.append(tuple(int(i) for i in ids) if all(re.fullmatch(r"\d+", i) for i in ids) else line)
    if not out:
        raise ConfigError(f"--prompts {path} has no prompts; write one prompt per line")
    return tuple(out)


def slug(budget) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "", str(budget).replace("%", "pct")) or "budget"


def _steps_per_run(req: ProfileRequest) -> int:
    return len(req.prompts) * (1 + req.new_tokens)


def _check_budgets(pkg, req: ProfileRequest) -> dict:
    """Every budget against the package's minimum, before anything runs: {budget: BudgetPlan}."""
    from edgemoe.runtime.budget import plan_budget
    level = req.level if isinstance(req.level, int) else None
    return {b: plan_budget(pkg, b, context=req.context, level=level) for b in req.budgets}


def trace_meta(rec, host) -> dict:
    held = rec.plan["dense"] + rec.plan["kv_cache"] + rec.plan["work"] + \
        (rec.stats.get("cache_peak_bytes") or 0)
    return {"facts": rec.meta, "plan": rec.plan,
            "config": {k: rec.config[k] for k in ("budget", "policy", "level")},
            "timing": host_timing(rec), "host": host.to_dict(),
            "step_kinds": [s[0] for s in rec.steps],
            "prefetch_recall": rec.stats.get("prefetch_recall"),
            "rss": {**rec.rss, "runtime_held": held}}


def _forecast_row(workload, device, capacity, policy=None, level="recorded", timeline_step=0) -> dict:
    f = forecast(workload, device, capacity, policy, level, timeline_step=timeline_step)
    fixed = workload.fixed_bytes
    f["runtime_peak_bytes"] = fixed + f["cache_end_bytes"]
    rss = workload.rss
    if rss.get("peak") and rss.get("runtime_held"):       # python + onnxruntime beyond the budget
        f["peak_rss_bytes_estimate"] = f["runtime_peak_bytes"] + max(rss["peak"] - rss["runtime_held"], 0)
    f["budget_bytes"] = fixed + capacity
    f["fits_device_memory"] = f["budget_bytes"] <= device.memory_usable
    return f


def check_request(req: ProfileRequest) -> None:
    """Everything that can be refused before a run: device, package, budgets, files, --out."""
    get_device(req.device, req.devices_dir)
    if req.out:
        check_out(req.out)
    if req.plots and req.out:
        from edgemoe.profiler.plots import require_matplotlib
        require_matplotlib()
    if req.replay:
        return
    if req.package is None:
        raise ConfigError("give the package to profile (edgemoe profile PKG ...), or --replay TRACE")
    from edgemoe.package.reader import Package
    _check_budgets(Package(req.package), req)
    if req.eval_text and not Path(req.eval_text).is_file():
        raise ConfigError(f"--eval-text {req.eval_text} is not a file")


def run_profile(req: ProfileRequest, progress=None) -> dict:
    """Measure (and forecast for ``req.device``) every (policy, budget); returns the report dict.

    ``progress(n)`` is called with the number of forward steps just done; the total is
    ``total_steps(req)``.
    """
    if req.replay:
        return replay_profile(req)
    from edgemoe.package.reader import Package

    check_request(req)
    device = get_device(req.device, req.devices_dir)
    host = get_device(HOST, req.devices_dir)
    pkg = Package(req.package)
    plans = _check_budgets(pkg, req)
    stage = Staging(req.out) if req.out else None
    tmp = None if stage else tempfile.TemporaryDirectory(prefix="edgemoe-profile-")
    root = stage.dir if stage else Path(tmp.name)
    try:
        rows, timelines, heat_trace = [], {}, None
        for policy in req.policies:
            for budget in req.budgets:
                trace = root / "traces" / f"{policy}-{slug(budget)}.jsonl"
                trace.parent.mkdir(parents=True, exist_ok=True)
                cfg = RunConfig(package=str(pkg.root), budget=budget, prompts=req.prompts,
                                policy=policy, level=req.level, new_tokens=req.new_tokens,
                                context=req.context, eval_text=req.eval_text,
                                eval_tokens=req.eval_tokens, trace=str(trace))
                rec = run_isolated(cfg, progress) if req.isolate else record(cfg, progress)
                write_meta(trace, trace_meta(rec, host), keep_steps=len(rec.steps))
                row = {"policy": policy, "budget": budget, "measured": summarize(rec),
                       "trace": str(trace.relative_to(root)) if stage else None}
                k, segs = decode_step_timeline(rec)
                timelines[(policy, budget)] = {"measured": segs, "step": k}
                if device.name != HOST:
                    wl = load_workload(trace)
                    row["forecast"] = _forecast_row(wl, device, rec.plan["experts"], timeline_step=k)
                    timelines[(policy, budget)]["forecast"] = row["forecast"].pop("timeline")
                rows.append(row)
                heat_trace = heat_trace or trace
        report = _report(req, device, host, pkg=str(pkg.root), rows=rows, mode="measured")
        report["budget_plans"] = {b: p.to_dict() for b, p in plans.items()}
        if req.target_tps:
            from edgemoe.profiler.recommend import recommend
            biggest = max(rows, key=lambda r: r["measured"]["budget_bytes"])
            wl = load_workload(root / "traces" / f"{biggest['policy']}-{slug(biggest['budget'])}.jsonl")
            report["recommendation"] = recommend(wl, device, req.target_tps, biggest["policy"])
        _finish(report, stage, timelines, heat_trace, req)
        return report
    except BaseException:
        if stage:
            stage.discard()
        raise
    finally:
        if tmp:
            tmp.cleanup()


def replay_profile(req: ProfileRequest) -> dict:
    """Forecast from a recorded trace alone (no weights needed; the package only checks identity)."""
    device = get_device(req.device, req.devices_dir)
    host = get_device(HOST, req.devices_dir)
    expect = None
    if req.package:
        from edgemoe.package.reader import Package
        expect = package_id(Package(req.package))
    if not Path(req.replay).is_file():
        raise ConfigError(f"--replay {req.replay} is not a file; give a trace written by "
                          f"`edgemoe profile --out DIR` (DIR/traces/*.jsonl)")
    wl = load_workload(req.replay, expect)
    budgets = req.budgets or (wl.config["budget"],)
    policies = req.policies or (wl.config["policy"],)
    level = "recorded" if req.level is None else req.level
    caps = {b: wl.resolve_budget(b, None if level == "recorded" else level) for b in budgets}
    if req.plots and req.out:
        from edgemoe.profiler.plots import require_matplotlib
        require_matplotlib()
    stage = Staging(req.out) if req.out else None
    try:
        rows, timelines = [], {}
        for policy in policies:
            for b in budgets:
                total, cap = caps[b]
                f = _forecast_row(wl, device, cap, policy, level)
                timelines[(policy, b)] = {"forecast": f.pop("timeline"), "step": 0}
                rows.append({"policy": policy, "budget": b, "forecast": f})
        report = _report(req, device, host, pkg=req.package, rows=rows, mode="replay")
        report["trace"] = str(req.replay)
        report["recorded"] = {**wl.config, "host": wl.host.get("description")}
        if req.target_tps:
            from edgemoe.profiler.recommend import recommend
            report["recommendation"] = recommend(wl, device, req.target_tps, policies[0])
        _finish(report, stage, timelines, Path(req.replay), req)
        return report
    except BaseException:
        if stage:
            stage.discard()
        raise


def _report(req, device, host, pkg, rows, mode) -> dict:
    notes = []
    if device.name == HOST and mode == "measured":
        notes.append("measured on this machine")
    elif device.name == HOST:
        notes.append("FORECAST for the machine that recorded the trace, from its own measured timings "
                     "(the routing replayed through the policy at each budget)")
    else:
        src = "the recorded trace" if mode == "replay" else "measurements on this machine"
        notes.append(f"FORECAST for {device.name} from {src}: compute scaled by the host/device "
                     f"throughput of each backend (ort, planes), expert I/O from the profile's storage ({device.storage.read_bandwidth / 1e6:.0f} MB/s, "
                     f"{device.storage.read_latency * 1e6:.0f} us)")
    if not host.calibrated:
        notes.append("the host profile is the built-in conservative default, not measured: run "
                     "`edgemoe calibrate` for device forecasts scaled from this machine's real speed")
    base = [r["measured"]["rss_base_bytes"] for r in rows if r.get("measured")]
    if base:
        notes.append(f"process RSS includes the Python interpreter and libraries ({fmt_size(max(base))} "
                     f"before the runtime loaded), which the budget does not cover")
    for r in rows:
        f = r.get("forecast")
        if f and not f["fits_device_memory"]:
            notes.append(f"budget {r['budget']} ({fmt_size(f['budget_bytes'])}) exceeds "
                         f"{device.name}'s usable memory {fmt_size(device.memory_usable)}")
        for n in (f or {}).get("notes", []):
            if n not in notes:
                notes.append(n)
    return {"mode": mode, "package": pkg, "device": device.to_dict(), "device_source": device.source,
            "host_calibrated": host.calibrated, "rows": rows, "notes": notes,
            "settings": {"budgets": list(req.budgets), "policies": list(req.policies),
                         "level": req.level, "prompts": len(req.prompts),
                         "new_tokens": req.new_tokens, "context": req.context}}


def _finish(report, stage, timelines, heat_trace, req) -> None:
    if stage is None:
        return
    if req.plots:
        from edgemoe.profiler import plots
        report["plots"] = plots.write_all(report, timelines, heat_trace, stage)
    stage.path("report.json").write_text(json.dumps(report, indent=2, default=str))
    from edgemoe.profiler.report import table_text
    stage.path("report.txt").write_text(table_text(report) + "\n")
    files = stage.commit()
    report["files"] = [str(p) for p in files]


def total_steps(req: ProfileRequest) -> int:
    return 0 if req.replay else len(req.policies) * len(req.budgets) * _steps_per_run(req)
