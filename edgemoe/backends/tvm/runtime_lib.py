"""Running CPU kernel libraries with TVM's runtime alone: ``tvm_ffi`` and ``libtvm_runtime.so``.

``import tvm`` maps the whole compiler (``libtvm_compiler.so``, 240 MB with LLVM): measured +160 MiB
of RSS, and ``tvm_ffi`` imports torch eagerly where torch is installed (+210 MiB). Under a memory
budget that is most of a small board's memory, so the runtime loads the kernels the way a device
would: ``tvm_ffi.load_module`` over ``libtvm_runtime.so`` (+19 MiB measured, numpy already loaded).
Nothing here imports ``tvm``; compiling still does (``compile.py``).
"""
from __future__ import annotations

import ctypes
import importlib.util
import platform
import sys
from functools import lru_cache
from pathlib import Path

from edgemoe.backends.tvm import INSTALL_HINT
from edgemoe.errors import ConfigError


def _find(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):     # a broken or stubbed-out package
        return None


def runtime_missing_reason() -> str | None:
    """Why CPU kernels cannot be loaded here (None if they can), without importing anything."""
    if _find("tvm_ffi") is None:
        return f"apache-tvm-ffi is not installed; {INSTALL_HINT}"
    if _runtime_library() is None:
        return f"libtvm_runtime.so of apache-tvm is not found; {INSTALL_HINT}"
    return None


def _runtime_library() -> Path | None:
    spec = _find("tvm")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "lib" / "libtvm_runtime.so"
    return path if path.exists() else None


@lru_cache(maxsize=None)
def _ffi():
    """``tvm_ffi`` with TVM's runtime library loaded (once per process)."""
    why = runtime_missing_reason()
    if why:
        raise ConfigError(f"the tvm backend needs apache-tvm: {why}")
    block = "torch" not in sys.modules
    if block:        # tvm_ffi's eager `import torch` (a workaround for a Windows symbol clash)
        sys.modules["torch"] = None      # makes that import fail fast; undone right after
    try:
        import tvm_ffi
    finally:
        if block:
            del sys.modules["torch"]
    if "tvm" not in sys.modules:         # a full `import tvm` has loaded it already
        ctypes.CDLL(str(_runtime_library()), mode=ctypes.RTLD_GLOBAL)
    return tvm_ffi


def load_cpu_module(path):
    """The kernel library at ``path`` (built for an llvm target), its functions by name."""
    return _ffi().load_module(str(path))


def from_dlpack(arr):
    """A zero-copy TVM tensor over the numpy array ``arr`` (any alignment)."""
    return _ffi().from_dlpack(arr, require_alignment=0)


def cpu_flags() -> list[str]:
    """This CPU's feature flags (/proc/cpuinfo ``flags`` on x86, ``Features`` on arm), sorted."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return sorted(set(value.split()))
    return []


def arch_mismatch(cpu_target: dict) -> str | None:
    """Why code built for the llvm target ``cpu_target`` cannot run on this machine's
    architecture (None if it can, or if the target names none)."""
    arch = str(cpu_target.get("mtriple", "")).split("-")[0]
    if arch and arch != platform.machine():
        return f"they are built for {arch}, this machine is {platform.machine()}"
    return None


def cpu_mismatch(index: dict) -> str | None:
    """Why CPU kernels described by ``index`` cannot run on this CPU (None if they can): another
    architecture, or CPU features the building machine had (recorded for ``host`` builds) that this
    one lacks. (A library cross-built for a named CPU is checked by architecture only: naming this
    CPU as LLVM does would need the compiler library.)"""
    why = arch_mismatch(index["target"])
    if why:
        return why
    built_on = index.get("built_on") or {}
    if built_on.get("flags") and index["target"].get("mcpu") == built_on.get("cpu"):
        missing = sorted(set(built_on["flags"]) - set(cpu_flags()))
        if missing:
            return (f"they are built for CPU {built_on.get('cpu')}, and this one lacks "
                    f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    return None

