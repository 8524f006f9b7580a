"""One measured run: the real runtime on some prompts at one (budget, policy, level), its events
collected by an ``EventLog``, its routing trace written by the runtime, and process memory read from
/proc. The recorder only listens (``events=``, ``trace=``); it never steers the runtime.

``run_isolated`` runs a configuration in a fresh Python process (``python -m
edgemoe.profiler.recorder``) so its peak RSS is its own, and also returns the child's peak RSS as
the parent reads it from /proc: an outside measurement of the same number.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgemoe import errors as E
from edgemoe.errors import ConfigError, EdgeMoEError

EVENT_FIELDS = ("kind", "t0", "t1", "step", "layer", "expert", "bits", "nbytes")


@dataclass(frozen=True)
class RunConfig:
    """What to run: a package at one budget/policy/level on prompts (text or token-id lists)."""

    package: str
    budget: object                        # '50%', '1GiB' or bytes
    prompts: tuple                        # each a str or a tuple of token ids
    policy: str = "hebf"
    level: object = None                  # bits, 'auto' or None (the top level)
    new_tokens: int = 32                  # decode steps per prompt (greedy)
    context: int = 512
    eval_text: str | None = None          # a text file to score (perplexity) after the decode runs
    eval_tokens: int = 1024
    eval_window: int = 256
    trace: str | None = None              # where the runtime writes its routing trace


@dataclass
class RunRecord:
    """Everything one run measured; ``metrics.summarize`` turns it into the report's numbers."""

    config: dict
    package_id: str
    plan: dict                            # the runtime's BudgetPlan
    stats: dict                           # Runtime.stats() after the decode runs
    steps: list                           # [kind, tokens, t0, t1] per forward call, in order
    events: list                          # EVENT_FIELDS tuples
    rss: dict                             # base, loaded, peak (VmHWM at the end), peak_decode
                                          # (before --eval-text), outside_peak
    eval: dict | None = None
    meta: dict = field(default_factory=dict)   # package facts the forecast needs (see workload)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        return cls(**d)


def prompt_ids(rt, prompts, context: int, new_tokens: int) -> list[list[int]]:
    """Token ids of each prompt, truncated so that prompt + decode fits ``context``."""
    keep = max(context - new_tokens, 1)
    out = []
    for p in prompts:
        ids = rt.encode(p) if isinstance(p, str) else [int(i) for i in p]
        if not ids:
            raise ConfigError("a prompt is empty; give some text (or token ids) on each line")
        out.append(ids[:keep])
    return out


def record(cfg: RunConfig, progress=None) -> RunRecord:
    """Run ``cfg`` in this process. ``progress(n)`` is called after each forward step (n steps)."""
    import numpy as np

    from edgemoe.profiler.workload import package_facts
    from edgemoe.runtime.engine import Runtime
    from edgemoe.runtime.events import EventLog
    from edgemoe.runtime.memory import rss_bytes

    if cfg.context < 2 or cfg.new_tokens < 1:
        raise ConfigError("the profile needs context >= 2 and at least one new token per prompt")
    _reset_peak()
    rss0 = rss_bytes()
    log = EventLog()
    rt = Runtime(cfg.package, level=cfg.level, budget=cfg.budget, policy=cfg.policy,
                 context=cfg.context, trace=cfg.trace, events=log)
    steps: list = []
    try:
        rss_loaded = rss_bytes()
        for ids in prompt_ids(rt, cfg.prompts, cfg.context, cfg.new_tokens):
            rt.reset()
            t0 = time.perf_counter()
            logits = rt.forward(ids)
            steps.append(["prefill", len(ids), t0, time.perf_counter()])
            if progress:
                progress(1)
            nxt = int(np.argmax(logits[-1]))
            for _ in range(cfg.new_tokens):
                t0 = time.perf_counter()
                logits = rt.forward([nxt])
                steps.append(["decode", 1, t0, time.perf_counter()])
                nxt = int(np.argmax(logits[-1]))
                if progress:
                    progress(1)
        stats = rt.stats()
        peak_decode = rss_bytes("VmHWM")
        result = None
        if cfg.eval_text:
            from edgemoe.runtime.evaluate import evaluate
            text = Path(cfg.eval_text).read_text(encoding="utf-8", errors="replace")
            n_events = len(log)
            res = evaluate(rt, text, window=min(cfg.eval_window, cfg.context),
                           max_tokens=cfg.eval_tokens)
            del log[n_events:]              # the timeline and rates are the decode runs' only
            result = res.to_dict()
        peak = rss_bytes("VmHWM")       # the whole run's peak, as an outside observer sees it
        events = [tuple(getattr(e, f) for f in EVENT_FIELDS) for e in log]
        return RunRecord(config=asdict(cfg), package_id=rt.package_id,
                         plan=rt.budget_plan.to_dict(), stats=_jsonable(stats), steps=steps,
                         events=events, rss={"base": rss0, "loaded": rss_loaded, "peak": peak,
                                                  "peak_decode": peak_decode},
                         eval=result, meta=package_facts(rt.pkg))
    finally:
        rt.close()


def _reset_peak() -> None:
    """Restart this process's peak RSS (VmHWM) from its current RSS, so that runs in one process
    each report their own peak (Linux: ``echo 5 > /proc/self/clear_refs``); a no-op elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _jsonable(d):
    return json.loads(json.dumps(d, default=str))


# ---- isolation: one process per configuration ----

def _vm_hwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_isolated(cfg: RunConfig, progress=None, timeout: float | None = None) -> RunRecord:
    """Run ``cfg`` in a fresh Python process; its EdgeMoEErrors come back as the same class.

    ``rss["outside_peak"]`` is the worker's peak RSS read by this process from
    ``/proc/PID/status`` once the worker is done (it waits to be released), i.e. measured from
    outside. (``wait4``'s ``ru_maxrss`` would not do: Linux carries a parent's own high-water
    mark into the children it forks.)
    """
    with tempfile.TemporaryDirectory(prefix="edgemoe-profile-") as tmp:
        cfg_path, out_path = Path(tmp) / "config.json", Path(tmp) / "record.json"
        cfg_path.write_text(json.dumps(asdict(cfg)))
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        with open(Path(tmp) / "stderr", "w+") as err:
            proc = subprocess.Popen([sys.executable, "-m", "edgemoe.profiler.recorder", str(cfg_path),
                                     str(out_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err, text=True, env=env)
            t_end = time.monotonic() + timeout if timeout else None
            outside = None
            try:
                for line in proc.stdout:
                    if line.startswith("step") and progress:
                        progress(1)
                    elif line.startswith("done"):
                        outside = _vm_hwm(proc.pid)
                        proc.stdin.close()
                    if t_end and time.monotonic() > t_end:
                        raise ConfigError(f"the profile run at budget {cfg.budget} took longer than "
                                          f"{timeout:.0f} s; use fewer prompts or --new-tokens")
                proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                proc.stdout.close()
                if proc.stdin and not proc.stdin.closed:
                    proc.stdin.close()
            err.seek(0)
            err_text = err.read()
        if out_path.exists():
            d = json.loads(out_path.read_text())
            if "error" in d:
                cls = getattr(E, d["type"], EdgeMoEError)
                raise (cls if isinstance(cls, type) and issubclass(cls, EdgeMoEError)
                       else EdgeMoEError)(d["error"])
            rec = RunRecord.from_dict(d)
            rec.rss["outside_peak"] = outside
            return rec
        raise RuntimeError(f"the profile worker failed (exit {proc.returncode}):\n{err_text[-3000:]}")


def _worker(cfg_path: str, out_path: str) -> int:
    d = json.loads(Path(cfg_path).read_text())
    d["prompts"] = tuple(p if isinstance(p, str) else tuple(p) for p in d["prompts"])
    cfg = RunConfig(**d)

    def tick(_n):
        print("step", flush=True)

    try:
        rec = record(cfg, tick)
    except EdgeMoEError as e:
        Path(out_path).write_text(json.dumps({"error": str(e), "type": type(e).__name__}))
        return 2
    Path(out_path).write_text(json.dumps(rec.to_dict()))
    print("done", flush=True)          # the parent reads our VmHWM now, then releases us
    sys.stdin.readline()
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1], sys.argv[2]))
