"""`--target-tps X`: the smallest budget (and level mode) whose forecast decode rate reaches X."""
from __future__ import annotations

from edgemoe.errors import ConfigError
from edgemoe.profiler.forecast import forecast
from edgemoe.runtime.budget import fmt_size

SHARES = tuple(range(5, 101, 5))     # % of the experts' top-level bytes on top of the fixed part


def level_modes(ladder) -> list:
    """Level modes best quality first: every expert at the top level, auto, then lower fixed levels."""
    return [ladder[-1], "auto"] + [b for b in reversed(ladder[:-1])]


def recommend(workload, device, target: float, policy: str | None = None) -> dict:
    """Search budgets (minimum, then 5%..100% of the experts) per level mode on ``device``.

    Returns the recommendation: budget bytes, level mode and its forecast; or, when no budget that
    fits the device's usable memory reaches ``target``, ``reached: False`` and the fastest seen.
    """
    if not target or target <= 0:
        raise ConfigError("--target-tps must be a positive number of decode tokens per second")
    f = workload.facts
    top = f["expert_bytes"][str(f["ladder"][-1])]
    best, found = None, None
    for mode in level_modes(f["ladder"]):
        level = None if mode == f["ladder"][-1] else mode
        lo = workload.minimum(level)
        sizes = sorted({lo, *(workload.fixed_bytes + top * p // 100 for p in SHARES)})
        for total in (s for s in sizes if s >= lo):
            if total > device.memory_usable:
                break
            if found is not None and total > found["budget_bytes"]:
                break
            r = forecast(workload, device, total - workload.fixed_bytes, policy, level)
            row = {"budget_bytes": total, "budget": fmt_size(total), "level": mode,
                   "decode_tokens_per_s": r["decode_tokens_per_s"], "forecast": r}
            if best is None or (r["decode_tokens_per_s"] or 0) > (best["decode_tokens_per_s"] or 0):
                best = row
            if (r["decode_tokens_per_s"] or 0) >= target:
                if found is None or total < found["budget_bytes"]:
                    found = row
                break
    out = {"target_tokens_per_s": target, "device": device.name, "reached": found is not None}
    pick = found or best
    if pick is not None:
        out.update({k: v for k, v in pick.items() if k != "forecast"})
        out["level_mix"] = pick["forecast"]["level_mix"]
    if found is None:
        out["message"] = (f"no budget up to the device's usable {fmt_size(device.memory_usable)} "
                          f"reaches {target:g} tok/s on {device.name}; the fastest found is "
                          f"{(pick or {}).get('decode_tokens_per_s') or 0:.2f} tok/s")
    else:
        out["message"] = (f"{found['budget']} at level {found['level']} reaches "
                          f"{found['decode_tokens_per_s']:.2f} tok/s on {device.name}")
    return out
