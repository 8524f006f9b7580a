"""``export --jobs N``: decoder layers exported by N worker processes at once.

Each worker indexes the checkpoint itself (headers only), resolves the same weight map, and writes
one layer at a time into the shared staging folder through its own writer: the layer's graphs,
record file and expert graphs, exactly the bytes a one-process export writes. It returns the
layer's journal entry (files with length and sha256, the experts' manifest entry, the tensors it
read) and its peak memory; the main process journals each layer as it arrives, so an interrupt
keeps every finished layer for ``--resume``. Memory per job: about one layer of source weights
(read one tensor at a time) plus its quantization buffers.
"""
from __future__ import annotations

import multiprocessing as mp
import resource
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

_STATE: dict = {}


def _init(src: str, quant: dict, dense: dict, stage: str):
    """Per worker: the plan and weight map, made once."""
    from edgemoe.exporters.export import plan_export
    from edgemoe.quant.dense import DenseQuant
    from edgemoe.quant.record import record_layout
    from edgemoe.quant.spec import QuantSpec
    q, d = QuantSpec.from_dict(quant), DenseQuant.from_dict(dense)
    plan, _, wmap = plan_export(src, q, d)
    _STATE.update(plan=plan, wmap=wmap, quant=q, dense=d, stage=Path(stage),
                  layout=record_layout(plan.arch.expert_matrices(), q, plan.arch.expert_biases()))


def _layer(i: int) -> tuple[int, dict, int]:
    from edgemoe.exporters.export import export_layer
    from edgemoe.package.writer import PackageWriter
    s = _STATE
    s["wmap"].used.clear()
    result = export_layer(PackageWriter.attach(s["stage"]), s["wmap"], s["plan"].arch, s["layout"],
                          s["quant"], s["dense"], i)
    return i, result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def export_layers_in_parallel(stage: Path, plan, dense, layers: list[int], jobs: int, finished, tick):
    """Layers ``layers`` over ``jobs`` processes; ``finished(i, result)`` as each completes (in
    completion order), ``tick(stage, units, bytes)`` for the progress. Returns the workers' peak RSS."""
    from edgemoe.exporters.export import entry_bytes
    a = plan.arch
    peak = 0
    # fork (Linux): no re-import of the caller's __main__ (spawn needs scripts to guard it); the
    # export has run no onnxruntime session or thread pool yet at this point
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(layers)), mp_context=ctx, initializer=_init,
                             initargs=(str(plan.source), plan.quant.to_dict(), dense.to_dict(),
                                       str(stage))) as pool:
        pending = {pool.submit(_layer, i) for i in layers}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    i, result, rss = f.result()
                    peak = max(peak, rss)
                    finished(i, result)
                    tick(f"layer {i}", 1 + (a.num_experts if a.is_moe_layer(i) else 0), entry_bytes(result))
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    return peak
