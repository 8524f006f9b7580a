"""Expert scheduling policies, one module each, behind the protocol in ``base``."""
from __future__ import annotations

from edgemoe.errors import ConfigError
from edgemoe.schedulers.base import CacheView, LayerRequest, Plan, Policy

POLICIES = ("hebf", "lru", "lfu", "static", "belady")


def make_policy(name: str, experts=None, profile=None, future=None) -> Policy:
    """Build a policy: ``profile`` (heat per expert) for static, ``future`` (a trace) for belady."""
    if name == "hebf":
        from edgemoe.schedulers.hebf import HEBF
        return HEBF(experts)
    if name == "lru":
        from edgemoe.schedulers.lru import LRU
        return LRU()
    if name == "lfu":
        from edgemoe.schedulers.lfu import LFU
        return LFU()
    if name == "static":
        if not profile:
            raise ConfigError("the static policy needs a heat profile: pass --trace-profile TRACE "
                              "(a routing trace recorded with --trace)")
        from edgemoe.schedulers.static import Static
        return Static(profile)
    if name == "belady":
        if future is None:
            raise ConfigError("belady is the offline optimum: it needs the recorded routing trace "
                              "of the same run (replay it with the benchmark or --trace-profile)")
        from edgemoe.schedulers.belady import Belady
        return Belady(future)
    raise ConfigError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")


__all__ = ["CacheView", "LayerRequest", "Plan", "Policy", "POLICIES", "make_policy"]
