"""Open and validate an .edgemoe package before anything uses it.

``Package(path)`` checks the manifest's format and version, that every path stays inside the package,
that every file exists with its recorded length, and that the record layout the manifest claims is
the one this edgemoe computes. Content hashes are checked when bytes are read (``read_file``,
``ExpertRecords.read``) or all at once with ``verify()``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from edgemoe.arch import MoEArch
from edgemoe.errors import (ConfigError, CorruptRecordError, EdgeMoEError, IncompatiblePackageError,
                            PackageError, UnsafePathError)
from edgemoe.package import constants as C
from edgemoe.package.writer import sha256_file
from edgemoe.quant.record import RecordLayout, record_layout
from edgemoe.quant.dense import DenseQuant
from edgemoe.quant.spec import QuantSpec

SUPPORTED_MAJOR = int(C.FORMAT_VERSION.split(".")[0])


@dataclass(frozen=True)
class ExpertLevel:
    bits: int
    sha256: str      # of this level's chunk
    graph: str       # package-relative path of the level's ONNX graph


@dataclass(frozen=True)
class ExpertEntry:
    layer: int
    expert: int
    file: str        # package-relative record file
    offset: int      # byte offset of the record in that file
    levels: tuple[ExpertLevel, ...]

    def level(self, bits: int) -> ExpertLevel:
        for lv in self.levels:
            if lv.bits == bits:
                return lv
        raise ConfigError(f"level {bits} is not in this package's ladder "
                          f"{[lv.bits for lv in self.levels]}; choose one of those")


def _safe_rel(root: Path, rel) -> str:
    if not isinstance(rel, str) or not rel:
        raise PackageError(f"manifest path {rel!r} is not a non-empty string; the manifest is corrupt")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise UnsafePathError(f"manifest path {rel!r} leaves the package directory; refusing to read "
                              f"it (the package is corrupt or malicious)")
    resolved = (root / rel).resolve()
    if root.resolve() not in resolved.parents and resolved != root.resolve():
        raise UnsafePathError(f"manifest path {rel!r} resolves outside the package (through a link); "
                              f"refusing to read it")
    return rel


class Package:
    """A validated, read-only view of an .edgemoe package on disk."""

    def __init__(self, path):
        self.root = Path(path)
        mpath = self.root / C.MANIFEST
        if not mpath.exists():
            partial = self.root.with_name(self.root.name + C.PARTIAL_SUFFIX)
            hint = (" An export into it was interrupted; run the export again." if partial.exists()
                    else " Create one with `edgemoe export CHECKPOINT -o PACKAGE`.")
            raise PackageError(f"{self.root} is not an edgemoe package (no {C.MANIFEST}).{hint}")
        try:
            m = yaml.load(mpath.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as e:
            raise PackageError(f"{mpath} is not valid YAML ({' '.join(str(e).split())}); "
                               f"re-export the package") from e
        if not isinstance(m, dict):
            raise PackageError(f"{mpath} is not a mapping; re-export the package")
        self.manifest = m
        self._check_version(m)
        missing = [k for k in C.REQUIRED_KEYS if k not in m]
        if missing:
            raise PackageError(f"{mpath} lacks keys {missing}; re-export the package")
        try:
            self._load(m)
        except EdgeMoEError:
            raise
        except KeyError as e:  # a nested key is absent
            raise PackageError(f"{mpath} is malformed (an entry lacks key {e.args[0]!r}); "
                               f"re-export the package") from None
        except (TypeError, AttributeError, ValueError, IndexError) as e:  # wrong type of a value
            raise PackageError(f"{mpath} is malformed ({e}); re-export the package") from None

    def _load(self, m: dict):
        self.arch = MoEArch.from_dict(m[C.K_ARCH])
        self.quant = QuantSpec.from_dict(m[C.K_QUANT])
        try:
            self.dense = DenseQuant.from_dict(m.get(C.K_DENSE))
        except ConfigError as e:
            raise PackageError(f"{self.root}: {e}") from None
        self.layout: RecordLayout = record_layout(self.arch.expert_matrices(), self.quant, self.arch.expert_biases())
        self.files: dict[str, dict] = {_safe_rel(self.root, k): v for k, v in m[C.K_FILES].items()}
        self._check_files()
        g = m[C.K_GRAPHS]
        self.embed_graph = self._known(g[C.K_EMBED])
        self.head_graph = self._known(g[C.K_HEAD])
        layers = g[C.K_LAYERS]
        if not isinstance(layers, dict) or "f32" not in layers:
            raise PackageError(f"{self.root}: graphs.layers must map KV cache types to graph lists "
                               f"(f32 at least); re-export the package")
        # kv type -> one graph per layer; the f32 graphs name the weights files all types share
        self.kv_layer_graphs = {str(kv): [self._known(p) for p in paths] for kv, paths in layers.items()}
        self.layer_graphs = self.kv_layer_graphs["f32"]
        for kv, paths in self.kv_layer_graphs.items():
            if len(paths) != self.arch.num_layers:
                raise PackageError(f"manifest lists {len(paths)} layer graphs for "
                                   f"{self.arch.num_layers} layers ({kv} KV cache); re-export the package")
        self.experts: dict[tuple[int, int], ExpertEntry] = {}
        self._read_experts(m[C.K_EXPERTS])
        scales = m.get(C.K_KV_SCALES)
        self.kv_scales_file = self._known(scales) if scales else None
        tok = m.get(C.K_TOKENIZER)
        self.tokenizer_file = self._known(tok[C.K_FILE]) if tok else None
        self.add_bos = bool(tok.get(C.K_ADD_BOS, False)) if tok else False
        tmpl = tok.get(C.K_CHAT_TEMPLATE) if tok else None
        self.chat_template_file = self._known(tmpl) if tmpl else None
        self.special_tokens: dict[str, str] = dict(tok.get(C.K_SPECIAL_TOKENS) or {}) if tok else {}

    # ---- validation ----
    def _check_version(self, m: dict):
        if m.get(C.K_FORMAT) != C.FORMAT_NAME:
            raise PackageError(f"{self.root}: manifest format is {m.get(C.K_FORMAT)!r}, "
                               f"not {C.FORMAT_NAME!r}; this is not an edgemoe package")
        version = str(m.get(C.K_VERSION, ""))
        try:
            major = int(version.split(".")[0])
        except ValueError:
            raise PackageError(f"{self.root}: unreadable format_version {version!r}") from None
        if major > SUPPORTED_MAJOR:
            raise IncompatiblePackageError(
                f"{self.root} has format {version}, newer than this edgemoe reads "
                f"({C.FORMAT_VERSION}); upgrade edgemoe (pip install -U edgemoe)")
        if major < SUPPORTED_MAJOR:
            raise IncompatiblePackageError(
                f"{self.root} has format {version}, older than this edgemoe reads "
                f"({C.FORMAT_VERSION}: layer graphs over an in-place KV cache); re-export it from its "
                f"checkpoint with `edgemoe export`")

    def _check_files(self):
        for rel, meta in self.files.items():
            p = self.root / rel
            if not p.exists():
                raise PackageError(f"{rel} is missing from {self.root}; the package is incomplete, "
                                   f"re-export or re-copy it")
            if p.stat().st_size != meta[C.K_LENGTH]:
                raise CorruptRecordError(f"{rel} has {p.stat().st_size} bytes, manifest says "
                                         f"{meta[C.K_LENGTH]}: truncated or corrupt; re-copy the package")

    def _known(self, rel) -> str:
        rel = _safe_rel(self.root, rel)
        if rel not in self.files:
            raise PackageError(f"{rel} is referenced but not listed in the manifest's files")
        return rel

    def _read_experts(self, layers: list):
        bits = list(self.quant.ladder)
        for entry in layers:
            i = int(entry[C.K_LAYER])
            rel = _safe_rel(self.root, entry[C.K_FILE])
            prefixes = [lv[C.K_PREFIX] for lv in entry[C.K_LEVELS]]
            expected = [self.layout.prefix_length(b) for b in bits]
            if [lv[C.K_BITS] for lv in entry[C.K_LEVELS]] != bits or prefixes != expected:
                raise PackageError(f"layer {i}: manifest record layout {prefixes} differs from the one "
                                   f"this edgemoe computes {expected}; re-export the package")
            size = (self.root / rel).stat().st_size if (self.root / rel).exists() else -1
            for r in entry[C.K_RECORDS]:
                e, off = int(r[C.K_EXPERT]), int(r[C.K_OFFSET])
                if off < 0:
                    raise PackageError(f"{rel}: record of layer {i} expert {e} has offset {off}; "
                                       f"the manifest is corrupt, re-export the package")
                if off + self.layout.length > size:
                    raise CorruptRecordError(f"{rel}: record of layer {i} expert {e} ends at byte "
                                             f"{off + self.layout.length} but the file has {size}; "
                                             f"the package is truncated, re-copy it")
                levels = tuple(ExpertLevel(int(lv[C.K_BITS]), lv[C.K_SHA256], self._known(lv[C.K_GRAPH]))
                               for lv in r[C.K_LEVELS])
                if [lv.bits for lv in levels] != bits:
                    raise PackageError(f"layer {i} expert {e}: manifest levels {[lv.bits for lv in levels]} "
                                       f"differ from the ladder {bits}; re-export the package")
                if (i, e) in self.experts:
                    raise PackageError(f"manifest lists layer {i} expert {e} twice; re-export the package")
                self.experts[(i, e)] = ExpertEntry(i, e, rel, off, levels)
        want = {(i, e) for i in self.arch.moe_layers for e in range(self.arch.num_experts)}
        if set(self.experts) != want:
            missing, extra = sorted(want - set(self.experts))[:5], sorted(set(self.experts) - want)[:5]
            raise PackageError(f"manifest expert records do not match the arch (missing {missing}, "
                               f"unexpected {extra}); re-export the package")

    # ---- access ----
    def path(self, rel: str) -> Path:
        return self.root / rel

    def read_file(self, rel: str) -> bytes:
        """Read a listed file, checking its sha256."""
        data = (self.root / rel).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.files[rel][C.K_SHA256]:
            raise CorruptRecordError(f"{rel} in {self.root} does not match its sha256: corrupt; "
                                     f"re-copy or re-export the package")
        return data

    def kv_scales(self):
        """Per layer (k_scale, v_scale), each [KVH*D] float32: the int8 KV cache's per-channel
        scales, calibrated at export."""
        import numpy as np
        if self.kv_scales_file is None:
            raise PackageError(f"{self.root} has no int8 KV cache scales (exported before they were "
                               f"calibrated); use --kv-dtype f16, or re-export the package")
        self.check_file(self.kv_scales_file)
        a = self.arch
        raw = np.frombuffer(self.read_file(self.kv_scales_file), dtype="<f4")
        from edgemoe.package.graph_io import kv_head_dim
        want = a.num_layers * 2 * a.num_kv_heads * kv_head_dim(a.head_dim)
        if raw.size != want:
            raise PackageError(f"{self.kv_scales_file} in {self.root} holds {raw.size} scales, "
                               f"expected {want}; re-export the package")
        s = raw.reshape(a.num_layers, 2, -1).astype(np.float32)
        return [(np.ascontiguousarray(s[i, 0]), np.ascontiguousarray(s[i, 1])) for i in range(a.num_layers)]

    def chat_template(self) -> str | None:
        """The checkpoint's jinja chat template, as exported (None if it had none)."""
        if self.chat_template_file is None:
            return None
        return self.read_file(self.chat_template_file).decode("utf-8")

    def check_file(self, rel: str) -> None:
        """Check a listed file's sha256 without holding it in memory."""
        if sha256_file(self.root / rel) != self.files[rel][C.K_SHA256]:
            raise CorruptRecordError(f"{rel} in {self.root} does not match its sha256: corrupt; "
                                     f"re-copy or re-export the package")

    def verify(self, experts: bool = True) -> int:
        """Check every file's sha256 (and every expert chunk's); returns the bytes hashed."""
        n = 0
        for rel, meta in self.files.items():
            if sha256_file(self.root / rel) != meta[C.K_SHA256]:
                raise CorruptRecordError(f"{rel} does not match its sha256: corrupt; re-copy the package")
            n += meta[C.K_LENGTH]
        if experts:
            from edgemoe.package.record_store import ExpertStore
            store = ExpertStore(self)
            for key in sorted(self.experts):
                n += len(store.read(*key, self.quant.top_bits))
            store.close()
        return n

    @property
    def package_id(self) -> str:
        """Identifies the weights and quantization (routing traces name it in their header)."""
        return self.manifest[C.K_PRODUCER]["source"].get("fingerprint_sha256", "") + ":" + \
            str(self.quant.to_dict())

    def level_bytes(self, bits: int) -> int:
        """Resident bytes of all routed experts at level ``bits``."""
        return len(self.experts) * self.layout.prefix_length(bits)

    def dense_bytes(self) -> int:
        return sum(v[C.K_LENGTH] for k, v in self.files.items() if k.startswith(C.GRAPHS_DIR + "/"))
