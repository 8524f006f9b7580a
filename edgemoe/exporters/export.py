"""`edgemoe export`: a Hugging Face MoE checkpoint -> an .edgemoe package, streamed layer by layer.

Flow: Checkpoint (index only) -> family adapter -> MoEArch -> weight map resolved for every tensor
(fails before anything is written if a tensor is missing or left over) -> per layer: read its dense
weights, write its ONNX graph, then quantize its experts one at a time into the layer's record file
and write one small graph per expert and level -> manifest written last -> staged folder renamed.
At most one layer of source weights is in memory at a time; graph weights go straight to their
.data files as the graphs are built, and the vocabulary-sized embedding and LM head are copied
from the checkpoint in row blocks (~16 MB), never held whole.
"""
from __future__ import annotations

import datetime as _dt
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgemoe import __version__
from edgemoe.arch import MoEArch
from edgemoe.errors import CheckpointError, EdgeMoEError
from edgemoe.exporters.checkpoint import Checkpoint
from edgemoe.exporters.dense_graphs import embed_graph, head_graph, layer_graph
from edgemoe.exporters.families import adapter_for
from edgemoe.exporters.weight_map import WeightMap
from edgemoe.package import constants as C
from edgemoe.package.expert_graph import act_of, expert_graph
from edgemoe.package.graph_io import KV_DTYPES
from edgemoe.package.writer import PackageWriter
from edgemoe.quant.dense import DenseQuant, default_dense
from edgemoe.quant.record import encode_record, record_layout
from edgemoe.quant.spec import QuantSpec

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class ExportPlan:
    """What an export will write, computed from the checkpoint's index without reading weights."""

    source: Path
    family: str
    arch: MoEArch
    quant: QuantSpec
    files: list[tuple[str, int]] = field(default_factory=list)   # (path, approx bytes)
    chat: tuple | None = None    # read_chat_config's (template, special tokens, add_bos), with a tokenizer
    config_only: bool = False    # planned from config.json alone (no weights in the folder)
    params: tuple[int, int] = (0, 0)   # (total, active per token) parameters of the checkpoint
    hub_id: str | None = None    # the hub id the source was resolved from (its cached snapshot)
    source_fingerprint: str = ""  # Checkpoint.fingerprint(): config.json and the shards' headers

    @property
    def total_bytes(self) -> int:
        return sum(n for _, n in self.files)

    @property
    def fixed_bytes(self) -> int:
        """The dense graphs (embedding, layers, head) and tokenizer files: what every level holds."""
        return sum(n for p, n in self.files if not p.endswith(C.RECORD_FILE))

    def summary(self) -> dict:
        """What ``export --dry-run --json`` prints: parameters, files, the fixed part, the resident
        size per level, KV bytes per token (and the sliding layers' fixed KV)."""
        levels = {b: {"expert_bytes": self.level_bytes(b), "package_bytes": self.fixed_bytes + self.level_bytes(b)}
                  for b in self.quant.ladder}
        kvs = ("f16", "int8")
        return {"family": self.family, "config_only": self.config_only,
                "params_total": self.params[0], "params_active": self.params[1],
                "files": [{"path": p, "bytes": n} for p, n in self.files],
                "total_bytes": self.total_bytes, "fixed_bytes": self.fixed_bytes,
                "kv_bytes_per_token": {kv: self.kv_bytes_per_token(kv) for kv in kvs},
                "kv_window_bytes": {kv: self.kv_window_bytes(kv) for kv in kvs},
                "expert_bytes_per_level": {b: v["expert_bytes"] for b, v in levels.items()},
                "levels": levels}

    def kv_bytes_per_token(self, kv: str = "f16") -> int:
        """KV bytes per token of context in the full-attention layers (sliding ones are fixed)."""
        from edgemoe.package.graph_io import kv_bytes_per_token
        return kv_bytes_per_token(self.arch, kv)

    def kv_window_bytes(self, kv: str = "f16") -> int:
        """KV bytes the sliding-window layers hold at most, whatever the context."""
        from edgemoe.runtime.kv_cache import KVCache
        full = self.kv_bytes_per_token(kv)
        return KVCache.bytes_for(self.arch, 1 << 30, kv) - full * (1 << 30)

    def level_bytes(self, bits: int) -> int:
        layout = record_layout(self.arch.expert_matrices(), self.quant, self.arch.expert_biases())
        return len(self.arch.moe_layers) * self.arch.num_experts * layout.prefix_length(bits)


def _dense_bytes(arch: MoEArch, ckpt: Checkpoint, names: dict, dense: DenseQuant) -> int:
    total = 0.0
    for alts in names.values():
        for n in alts:
            if n in ckpt.tensors:
                shape = ckpt.tensors[n].shape
                c = 1
                for d in shape:
                    c *= d
                total += (dense.bytes_per_weight if len(shape) == 2 else 4) * c
                break
    return int(total)


def plan_export(src, quant: QuantSpec, dense: DenseQuant | None = None,
                allow_config_only: bool = False) -> tuple[ExportPlan, Checkpoint, WeightMap]:
    """Index the checkpoint, pick its adapter and resolve every tensor (raising on any mismatch).
    ``dense``: as ``export``'s. ``allow_config_only``: a folder with config.json and no weights
    gets a size-only plan (``exporters.config_plan``), for ``--dry-run``."""
    from edgemoe.exporters.hub import resolve_source
    dense = dense or default_dense(quant)
    given, src = src, resolve_source(src)
    ckpt = Checkpoint(src, weights=False)
    config_only = allow_config_only and not ckpt.has_weights()
    if not config_only:
        ckpt = Checkpoint(src)
    adapter = adapter_for(ckpt.config)
    try:
        arch = adapter.arch(ckpt.config)
    except EdgeMoEError:
        raise
    except KeyError as e:
        raise CheckpointError(f"config.json in {ckpt.path} lacks {e.args[0]!r}, which a {adapter.name} "
                              f"config needs; re-download config.json or add the key") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config.json in {ckpt.path} has a value of the wrong type ({e}); "
                              f"re-download config.json or fix it") from None
    from edgemoe.exporters.config_plan import fill_planned_tensors, parameter_counts
    if config_only:
        fill_planned_tensors(ckpt, adapter, arch)
    wmap = WeightMap(ckpt, adapter, arch)
    wmap.check_complete(wmap.planned_names())
    plan = ExportPlan(Path(src), adapter.name, arch, quant, config_only=config_only)
    plan.params = parameter_counts(ckpt, arch)
    plan.source_fingerprint = ckpt.fingerprint()
    plan.hub_id = str(given) if src != Path(given).expanduser() else None
    layout = record_layout(arch.expert_matrices(), quant, arch.expert_biases())
    g = adapter.global_names(arch)
    plan.files.append((C.GRAPHS_DIR + "/embed.onnx", _dense_bytes(arch, ckpt, {"e": g["embed"]}, dense.embedding)))
    for i in range(arch.num_layers):
        plan.files.append((C.layer_graph_path(i), _dense_bytes(arch, ckpt, adapter.layer_names(arch, i), dense)))
    head = {k: v for k, v in g.items() if k != "embed"}
    plan.files.append((C.GRAPHS_DIR + "/head.onnx", _dense_bytes(arch, ckpt, head, dense)
                       or int(dense.bytes_per_weight * arch.vocab_size * arch.hidden_size)))
    for i in arch.moe_layers:
        plan.files.append((f"{C.expert_dir(i)}/{C.RECORD_FILE}", arch.num_experts * layout.length))
    tok = Path(src) / C.TOKENIZER_FILE
    if tok.exists():
        _check_tokenizer(tok)
        plan.files.append((C.TOKENIZER_FILE, tok.stat().st_size))
        plan.chat = read_chat_config(Path(src))
        template = plan.chat[0]
        if template is not None:
            from edgemoe.runtime.chat_template import compile_template
            compile_template(template)        # a template that does not parse fails the export now
            plan.files.append((C.CHAT_TEMPLATE_FILE, len(template.encode("utf-8"))))
    return plan, ckpt, wmap


SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


def read_chat_config(src: Path) -> tuple[str | None, dict, bool]:
    """The checkpoint's chat template (``chat_template.jinja``, else ``tokenizer_config.json``'s
    ``chat_template``: a string, or a list of named templates of which "default" or the first is
    taken), its special tokens as strings, and whether the tokenizer prepends BOS
    (``add_bos_token``; default False)."""
    cfg = {}
    p = src / C.TOKENIZER_CONFIG_FILE
    if p.exists():
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{p} is not valid JSON ({e}); fix or remove it") from None
    template = None
    jinja = src / C.CHAT_TEMPLATE_FILE
    if jinja.exists():
        template = jinja.read_text(encoding="utf-8")
    else:
        t = cfg.get("chat_template")
        if isinstance(t, list):   # [{"name": ..., "template": ...}, ...]
            named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
            t = named.get("default") or next(iter(named.values()), None)
        template = t if isinstance(t, str) and t.strip() else None
    special = {}
    for k in SPECIAL_TOKEN_KEYS:
        v = cfg.get(k)
        if isinstance(v, dict):   # a serialised AddedToken
            v = v.get("content")
        if isinstance(v, str):
            special[k] = v
    return template, special, bool(cfg.get("add_bos_token", False))


def _check_tokenizer(path: Path):
    """Fail the export, not the first run on the device, if tokenizer.json does not load."""
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for any parse error
        raise CheckpointError(f"{path} does not load as a tokenizers tokenizer.json "
                              f"({' '.join(str(e).split())}); re-download it, or remove it to export "
                              f"without a tokenizer") from None


def export(src, out, quant: QuantSpec | None = None, overwrite: bool = False,
           progress: Progress | None = None, dense: DenseQuant | None = None, jobs: int = 1,
           resume: bool = False, stats: dict | None = None) -> Path:
    """Export checkpoint folder ``src`` into package folder ``out``; returns ``out``.

    Parameters
    ----------
    src : Hugging Face checkpoint folder (config.json, *.safetensors, optional tokenizer.json), or
        a hub id ("org/name") already in the local Hugging Face cache (see ``exporters.hub``)
    out : package folder to create (written atomically via ``out.partial``)
    quant : expert quantization; default matryoshka ladder (2, 4, 8), group 64
    overwrite : replace an existing package at ``out``
    progress : optional callback ``(stage, done, total)``
    dense : how the dense matrices are stored: int8 groups (the default: ~1/4 the memory and
        twice the decode speed on realistic shapes), int4 (attention and LM head at 4 bits) or
        float32 (``FLOAT32``: exact; the default when ``quant`` is float32); see
        ``edgemoe.quant.dense``
    jobs : layers exported at once, each in its own process (``exporters.layer_jobs``); memory
        per job is about one layer of source weights
    resume : continue the export an interrupt left in ``out.partial``: layers its journal lists
        are verified (length and sha256 of each file) and kept, the rest redone; the records come
        out byte-identical to an uninterrupted export's
    stats : a dict to fill with ``layers_resumed`` and (``jobs`` > 1) ``job_peak_rss`` bytes
    """
    quant = quant or QuantSpec()
    dense = dense or default_dense(quant)
    plan, ckpt, wmap = plan_export(src, quant, dense)
    src = plan.source                    # a hub id resolved to its cached snapshot
    arch, adapter = plan.arch, wmap.adapter
    layout = record_layout(arch.expert_matrices(), quant, arch.expert_biases())
    # progress units: embed, each layer's dense graph, each expert, head + manifest
    total = 2 + arch.num_layers + len(arch.moe_layers) * arch.num_experts
    done, written, sizes = [0], [0], dict(plan.files)

    def tick(stage: str, n: int = 1, nbytes: int = 0):
        """Progress in units (embed, layers, experts, head) and, in the label, planned bytes done."""
        done[0] += n
        written[0] += nbytes
        if progress:
            unit, shift = ("GiB", 30) if plan.total_bytes >= 1 << 30 else ("MiB", 20)
            progress(f"{stage} ({written[0] / (1 << shift):.2f} of {plan.total_bytes / (1 << shift):.2f} {unit})",
                     done[0], total)
    with PackageWriter(out, overwrite=overwrite, resume=resume) as w:
        journal = _start_journal(w, plan, dense, resume)
        _check_disk(w, plan, journal)
        # Each dense graph streams its weights into its .data file as it is built. The embedding
        # and the LM head are copied from the checkpoint in row blocks, never held whole; both are
        # resolved (and their shapes checked) here, before any layer is exported.
        embed, head = wmap.embed_rows(), wmap.head_weights()
        w.write_graph(C.GRAPHS_DIR + "/embed.onnx", lambda data: embed_graph(arch, embed, data, dense))
        tick("embed", nbytes=sizes[C.GRAPHS_DIR + "/embed.onnx"])
        layer_paths = {kv: [C.layer_graph_path(i, kv) for i in range(arch.num_layers)]
                       for kv in KV_DTYPES_F32_FIRST}
        done_layers = journal["layers"]
        for i, entry in sorted(done_layers.items()):     # resumed: finished layers, verified
            w.adopt(entry["files"])
            wmap.used.update(entry["used"])
            tick(f"layer {i} (resumed)", 1 + (arch.num_experts if arch.is_moe_layer(i) else 0), entry_bytes(entry))
        todo = [i for i in range(arch.num_layers) if i not in done_layers]
        if stats is not None:
            stats["layers_resumed"] = arch.num_layers - len(todo)

        def finished(i: int, result: dict):
            """A layer's files are on disk and hashed: journal it (an interrupt from here on keeps it)."""
            w.adopt(result["files"])
            wmap.used.update(result["used"])
            done_layers[i] = result
            w.save_journal(journal)
        if jobs > 1 and len(todo) > 1:
            from edgemoe.exporters.layer_jobs import export_layers_in_parallel
            peak = export_layers_in_parallel(w.stage, plan, dense, todo, jobs, finished,
                                             tick)
            if stats is not None:
                stats["job_peak_rss"] = peak
        else:
            for i in todo:
                finished(i, export_layer(PackageWriter.attach(w.stage), wmap, arch, layout, quant, dense, i,
                                         lambda stage, nbytes: tick(stage, nbytes=nbytes)))
        expert_entries = [done_layers[i]["experts"] for i in arch.moe_layers]
        w.write_graph(C.GRAPHS_DIR + "/head.onnx", lambda data: head_graph(arch, head, data, dense))
        del embed, head
        wmap.check_complete()
        tokenizer = None
        tok_src = Path(src) / C.TOKENIZER_FILE
        if tok_src.exists():
            w.copy_file(C.TOKENIZER_FILE, tok_src)
            template, special, add_bos = plan.chat
            tokenizer = {C.K_FILE: C.TOKENIZER_FILE, C.K_ADD_BOS: add_bos}
            if template is not None:
                w.write_bytes(C.CHAT_TEMPLATE_FILE, template.encode("utf-8"))
                tokenizer[C.K_CHAT_TEMPLATE] = C.CHAT_TEMPLATE_FILE
            if special:
                tokenizer[C.K_SPECIAL_TOKENS] = special
        manifest = {
            C.K_FORMAT: C.FORMAT_NAME,
            C.K_VERSION: C.FORMAT_VERSION,
            C.K_PRODUCER: {"edgemoe": __version__, "adapter": adapter.name,
                           "source": {"path": str(Path(src).resolve()),
                                      **({"hub_id": plan.hub_id} if plan.hub_id else {}),
                                      "model_type": ckpt.config.get("model_type"),
                                      "fingerprint_sha256": plan.source_fingerprint},
                           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
            C.K_ARCH: arch.to_dict(),
            C.K_QUANT: quant.to_dict(),
            **({C.K_DENSE: dense.to_dict()} if dense.quantized else {}),
            C.K_TOKENIZER: tokenizer,
            C.K_GRAPHS: {C.K_EMBED: C.GRAPHS_DIR + "/embed.onnx", C.K_HEAD: C.GRAPHS_DIR + "/head.onnx",
                         C.K_LAYERS: layer_paths},
            C.K_EXPERTS: expert_entries,
        }
        from edgemoe.exporters.kv_calibration import calibrate_kv_scales
        scales = calibrate_kv_scales(w.write_manifest(manifest))
        w.write_bytes(C.KV_SCALES_FILE, scales)
        manifest[C.K_KV_SCALES] = C.KV_SCALES_FILE
        tick("head and manifest", nbytes=sizes[C.GRAPHS_DIR + "/head.onnx"])
        return w.commit(manifest)


# the f32 graph of a layer is built first: it names and writes the weights file the others share
KV_DTYPES_F32_FIRST = ("f32", *(kv for kv in KV_DTYPES if kv != "f32"))


def plan_fingerprint(plan: ExportPlan, dense: DenseQuant) -> str:
    """What a resumed export must share with the interrupted one: source, arch, quant, dense, edgemoe."""
    import hashlib
    key = json.dumps([plan.source_fingerprint, plan.arch.to_dict(), plan.quant.to_dict(), dense.to_dict(),
                      __version__], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()


def _start_journal(w: PackageWriter, plan: ExportPlan, dense: DenseQuant, resume: bool) -> dict:
    """The journal of finished layers: a fresh one, or (resume) the interrupted export's with its
    layers whose files no longer verify dropped (they are redone)."""
    fp = plan_fingerprint(plan, dense)
    if not w.resumed:
        if resume:
            print(f"note: nothing to resume at {w.stage}; exporting from the start", file=sys.stderr)
        journal = {"plan": fp, "layers": {}}
        w.save_journal(journal)
        return journal
    journal = w.journal()
    if journal.get("plan") != fp:
        raise EdgeMoEError(f"{w.stage} was left by an export of another checkpoint or with other settings; "
                           f"rerun without --resume to start over (it is then removed)")
    layers = {int(i): e for i, e in (journal.get("layers") or {}).items()}
    journal["layers"] = {i: e for i, e in layers.items() if w.verified({**e["files"], **e["records"]})}
    redo = sorted(set(layers) - set(journal["layers"]))
    print(f"resuming: {len(journal['layers'])} of {plan.arch.num_layers} layers verified and kept"
          + (f"; layers {redo} failed verification and are redone" if redo else ""), file=sys.stderr)
    w.save_journal(journal)
    return journal


def _check_disk(w: PackageWriter, plan: ExportPlan, journal: dict):
    """Refuse to start an export that cannot fit: the plan's bytes (less what a resumed export
    already holds) against the free space of the output's file system."""
    import shutil
    held = sum(entry_bytes(e) for e in journal["layers"].values())
    need = plan.total_bytes - held
    free = shutil.disk_usage(w.stage).free
    if need > free:
        raise EdgeMoEError(f"the package needs about {need / 2**30:.2f} GiB more and {w.stage.parent} has "
                           f"{free / 2**30:.2f} GiB free; free some space or export elsewhere (-o)")


def entry_bytes(entry: dict) -> int:
    """Bytes a journal entry's files hold (its graphs and its record file)."""
    return sum(f[C.K_LENGTH] for f in (*entry["files"].values(), *entry["records"].values()))


def export_layer(w: PackageWriter, wmap: WeightMap, arch: MoEArch, layout, quant: QuantSpec,
                 dense: DenseQuant, i: int, tick=lambda stage, nbytes: None) -> dict:
    """Layer i's graphs (one per KV type, one weights file) and, for a MoE layer, its record file
    and expert graphs, through ``w`` (a fresh writer: its files are this layer's). Returns the
    journal entry: files (length, sha256; the manifest lists them), the record file (length,
    sha256: for the journal only), the experts' manifest entry, the source tensors read."""
    used0 = set(wmap.used)
    lw = wmap.layer_weights(i)
    rels = {kv: C.layer_graph_path(i, kv) for kv in KV_DTYPES_F32_FIRST}
    w.write_graph_variants(rels, lambda data, kv: layer_graph(arch, i, lw, data, dense, kv))
    del lw
    tick(f"layer {i}", sum(f[C.K_LENGTH] for f in w.files.values()))
    entry, records = None, {}
    if arch.is_moe_layer(i):
        entry = _write_experts(w, wmap, arch, layout, quant, i, lambda e: tick(f"layer {i} expert {e}", layout.length))
        w._register(entry[C.K_FILE])        # hashed for the journal only: the manifest checks
        records = {entry[C.K_FILE]: w.files.pop(entry[C.K_FILE])}   # records per expert chunk
    return {"files": dict(w.files), "records": records, "experts": entry, "used": sorted(wmap.used - used0)}


def _write_experts(w: PackageWriter, wmap: WeightMap, arch: MoEArch, layout, quant: QuantSpec,
                   i: int, on_expert=lambda e: None) -> dict:
    """Quantize layer i's experts one by one into its record file; one graph per expert and level."""
    d = C.expert_dir(i)
    rec = w.record_file(f"{d}/{C.RECORD_FILE}")
    records = []
    try:
        for e, mats in wmap.experts(i):
            biases = {m: mats.pop(f"{m}.bias") for m in arch.expert_biases()}
            chunks, lay = encode_record(mats, quant, biases)
            assert lay == layout  # same shapes, same spec: a programming error otherwise
            offset, hashes = rec.append(chunks)
            levels = []
            for bits, digest in zip(quant.ladder, hashes):
                g = f"{d}/{C.expert_graph_name(e, bits)}"
                w.write_onnx(g, expert_graph(layout, bits, C.RECORD_FILE, offset, arch.hidden_size,
                                             arch.intermediate_size, name=f"L{i:03d}E{e:03d}k{bits}",
                                             act=act_of(arch)),
                             external_data=False)
                levels.append({C.K_BITS: bits, C.K_SHA256: digest, C.K_GRAPH: g})
            records.append({C.K_EXPERT: e, C.K_OFFSET: offset, C.K_LEVELS: levels})
            on_expert(e)
    finally:
        rec.close()
    return {C.K_LAYER: i, C.K_FILE: f"{d}/{C.RECORD_FILE}",
            C.K_LEVELS: [{C.K_BITS: b, C.K_PREFIX: layout.prefix_length(b)} for b in quant.ladder],
            C.K_RECORDS: records}
