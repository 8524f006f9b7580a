"""The profiler: measured runs per budget, forecasts for device profiles, reports and plots.

It only listens to the runtime (``events=``, ``trace=``) and never steers it. Modules:
``recorder`` (one measured run, optionally in its own process), ``metrics`` (the report's numbers),
``timing`` (host timings from events), ``workload`` (a trace plus what replaying it needs),
``simulate`` (the cache replayed through a policy), ``forecast`` (the timing model), ``recommend``
(``--target-tps``), ``sweep`` (`edgemoe profile`), ``calibrate`` (`edgemoe calibrate`),
``report`` and ``plots`` (tables, JSON, PNGs), ``output`` (all-or-nothing report folders).
"""
from __future__ import annotations

__all__ = ["ProfileRequest", "run_profile", "calibrate", "forecast", "load_workload"]


def __getattr__(name):  # lazy: importing the package loads nothing heavy
    if name in ("ProfileRequest", "run_profile"):
        from edgemoe.profiler import sweep
        return getattr(sweep, name)
    if name == "calibrate":
        from edgemoe.profiler.calibrate import calibrate
        return calibrate
    if name == "forecast":
        from edgemoe.profiler.forecast import forecast
        return forecast
    if name == "load_workload":
        from edgemoe.profiler.workload import load_workload
        return load_workload
    raise AttributeError(name)
