"""Runtime events: what the profiler listens to (it never steers).

An event sink is any callable taking an ``Event``; it may be called from I/O threads, so it must be
thread-safe (``list.append`` is). Times are ``time.perf_counter()`` seconds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

KINDS = ("step", "dense", "read", "wait", "compute", "memory")


@dataclass(frozen=True)
class Event:
    kind: str            # step | dense | read | wait | compute | memory
    t0: float
    t1: float
    step: int = -1
    layer: int = -1
    expert: int = -1
    bits: int = 0
    nbytes: int = 0      # bytes read (read), bytes held (memory), tokens (step)

    def to_dict(self) -> dict:
        return asdict(self)


EventSink = Optional[Callable[[Event], None]]


class EventLog(list):
    """The simplest sink: collects events in memory (``Runtime(events=EventLog())``)."""

    def __call__(self, ev: Event) -> None:
        self.append(ev)
