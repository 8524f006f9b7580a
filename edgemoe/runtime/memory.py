"""Process memory, measured: resident set size from /proc, and a malloc setting that returns large
freed buffers to the OS at once (so RSS tracks what the runtime really holds)."""
from __future__ import annotations

import ctypes
import ctypes.util

_M_MMAP_THRESHOLD = -3


def rss_bytes(field: str = "VmRSS") -> int:
    """Current (VmRSS) or peak (VmHWM) resident set size of this process; 0 where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux: ``/proc/self/clear_refs``), so that a
    later ``rss_bytes("VmHWM")`` is the peak since now; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def pin_malloc_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """Fix glibc's mmap threshold: buffers above it are mapped and unmapped, never kept in the heap
    (glibc otherwise raises the threshold after each large free, and RSS stops shrinking).
    1 MiB: onnxruntime allocates 128-512 KiB buffers on every run, which at a 128 KiB threshold
    cost a map, page faults and an unmap each (measured: 7.5 -> 12.8 ms per token on the demo)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, nbytes))
    except (OSError, AttributeError):
        return False


_STARTED = False


def start_libraries() -> None:
    """Import tokenizers and start onnxruntime's environment once per process, before a runtime
    measures its fixed part (and before a benchmark takes its baseline).

    onnxruntime's first session costs ~9.5 MiB of RSS whatever the model (measured with a one-node
    graph: 8.2 MiB of it is the library's own code pages, file-backed and shared; 1.3 MiB its
    thread pool and registries), importing tokenizers ~3.6 MiB, numpy's first BLAS product ~1.2 MiB
    (its work buffers), numpy.random ~6 MiB (imported lazily, on the first sampler). These are the
    libraries' start-up,
    like importing them, not memory that the model or the budget can change, so they belong to the
    process's baseline. The tokenizer itself (vocab, merges, regex) is loaded later and counted."""
    global _STARTED
    if _STARTED:
        return
    import numpy as np
    import onnxruntime as ort
    import tokenizers  # noqa: F401
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    m = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "start", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    so.enable_cpu_mem_arena = False
    ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": np.zeros(1, np.float32)})
    # numpy's BLAS allocates its work buffers on the first matrix product of the process (measured:
    # 1.2 MiB with OpenBLAS on one thread), whatever the model: start-up as well
    a = np.ones((64, 64), np.float32)
    (a @ a).sum()
    np.random.default_rng(0)   # numpy.random is imported on first use (6 MiB), by the sampler
    _STARTED = True
