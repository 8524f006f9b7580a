"""Write a package atomically: everything goes to ``NAME.edgemoe.partial/`` and is renamed into place
only after the manifest (written last) is on disk. An interrupted export leaves no folder that looks
like a package. Its staging folder keeps a journal of the layers finished (their files' lengths and
sha256), so ``resume`` picks it up and redoes only the rest (a hard kill leaves the same); a failed
export (an error, or an interrupt before any layer finished) removes the staging folder.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

import onnx
import yaml

from edgemoe.errors import PackageError
from edgemoe.package import constants as C
from edgemoe.package.onnx_util import ExternalData, RecordingData, ReplayData


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class RecordFileWriter:
    """Appends page-aligned expert records to one layer's record file and hashes each chunk."""

    def __init__(self, path: Path):
        self.f = open(path, "wb")
        self.offset = 0

    def append(self, chunks: list[bytes]) -> tuple[int, list[str]]:
        """Write one record (its chunks back to back); return its offset and each chunk's sha256."""
        base = self.offset
        hashes = []
        for c in chunks:
            self.f.write(c)
            hashes.append(hashlib.sha256(c).hexdigest())
            self.offset += len(c)
        return base, hashes

    def close(self):
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


class PackageWriter:
    """Stage files of a package, then ``commit(manifest)``. Use as a context manager."""

    def __init__(self, out, overwrite: bool = False, resume: bool = False):
        self.out = Path(out)
        # a folder that is not a package is never replaced, so check that before suggesting --overwrite
        if self.out.exists() and not (self.out / C.MANIFEST).exists():
            raise PackageError(f"{self.out} exists and is not an edgemoe package; refusing to replace "
                               f"it. Remove it yourself or choose another output path")
        if self.out.exists() and not overwrite:
            raise PackageError(f"{self.out} already exists; pass --overwrite to replace it or choose "
                               f"another output path")
        self.stage = self.out.with_name(self.out.name + C.PARTIAL_SUFFIX)
        self.resumed = resume and (self.stage / C.JOURNAL).exists()
        try:
            if self.stage.exists() and not self.resumed:  # left by an interrupted export
                shutil.rmtree(self.stage)
            self.stage.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PackageError(f"cannot write to {self.out.parent}: {e.strerror}; choose a writable "
                               f"output path") from e
        self.files: dict[str, dict] = {}

    @classmethod
    def attach(cls, stage) -> "PackageWriter":
        """A writer into an existing staging folder (a parallel export's worker): it writes and
        hashes files; the main process journals, commits or aborts."""
        w = cls.__new__(cls)
        w.stage, w.out, w.resumed, w.files = Path(stage), None, False, {}
        return w

    # ---- the journal of finished layers (resume) ----
    def journal(self) -> dict:
        p = self.stage / C.JOURNAL
        return yaml.safe_load(p.read_text()) if p.exists() else {}

    def save_journal(self, journal: dict):
        """Atomically (write, fsync, rename): an interrupt leaves the old journal or the new one."""
        tmp = self.stage / (C.JOURNAL + ".tmp")
        with open(tmp, "w") as f:
            yaml.safe_dump(journal, f, sort_keys=False, width=120)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.stage / C.JOURNAL)

    def verified(self, files: dict[str, dict]) -> bool:
        """Whether every file of a journal entry is in the staging folder with its length and sha256."""
        for rel, entry in files.items():
            p = self.stage / rel
            if not p.exists() or p.stat().st_size != entry[C.K_LENGTH] or sha256_file(p) != entry[C.K_SHA256]:
                return False
        return True

    def adopt(self, files: dict[str, dict]):
        """Take files written (and hashed) elsewhere: by a worker, or by the run being resumed."""
        self.files.update(files)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # an interrupt keeps the finished layers for --resume; an error (the input needs fixing)
        # or an interrupt before any layer finished leaves nothing
        if exc_type is not None and not (issubclass(exc_type, KeyboardInterrupt)
                                         and self.journal().get("layers")):
            self.abort()
        return False

    def path(self, rel: str) -> Path:
        p = self.stage / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def _register(self, rel: str):
        p = self.stage / rel
        self.files[rel] = {C.K_LENGTH: p.stat().st_size, C.K_SHA256: sha256_file(p)}

    def write_bytes(self, rel: str, data: bytes):
        self.path(rel).write_bytes(data)
        self._register(rel)

    def copy_file(self, rel: str, src: Path):
        shutil.copyfile(src, self.path(rel))
        self._register(rel)

    def write_onnx(self, rel: str, model: onnx.ModelProto, external_data: bool = True):
        """Save a graph; with ``external_data`` its weights go to ``rel + '.data'`` beside it."""
        p = self.path(rel)
        if external_data:
            data = Path(rel).name + ".data"
            onnx.save_model(model, str(p), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data, size_threshold=256)
            if (p.parent / data).exists():
                self._register(str(Path(rel).parent / data))
        else:
            p.write_bytes(model.SerializeToString())
        self._register(rel)

    def write_graph(self, rel: str, build: Callable[[ExternalData], onnx.ModelProto]):
        """Build and save a graph whose large weights stream to ``rel + '.data'`` while it is built.

        ``build(data)`` makes the model with a ``GraphBuilder(..., data=data)``: every large
        initializer is written to the data file as it is added, so the weights are never copied
        into the model, and the model saved here is only the small graph. The files are the same
        as ``write_onnx(rel, model)`` writes for the same model.
        """
        p = self.path(rel)
        data_rel = str(Path(rel).parent / (Path(rel).name + ".data"))
        with ExternalData(self.stage / data_rel, Path(data_rel).name) as data:
            model = build(data)
        p.write_bytes(model.SerializeToString())
        if data.path.exists():
            self._register(data_rel)
        self._register(rel)

    def write_graph_variants(self, rels: dict, build: Callable[[object, str], onnx.ModelProto]):
        """Graphs that differ only in weightless nodes (a layer per KV cache type) over one weights
        file: ``build(data, variant)`` is called per variant, in ``rels``' order; the first writes
        the weights to its ``rel + '.data'``, the others point at the same bytes (``ReplayData``)."""
        (first, rel0), *rest = rels.items()
        p = self.path(rel0)
        data_rel = str(Path(rel0).parent / (Path(rel0).name + ".data"))
        with ExternalData(self.stage / data_rel, Path(data_rel).name) as data:
            recorded = RecordingData(data)
            p.write_bytes(build(recorded, first).SerializeToString())
        if data.path.exists():
            self._register(data_rel)
        self._register(rel0)
        for variant, rel in rest:
            if Path(rel).parent != Path(rel0).parent:
                raise ValueError(f"graph variants share one weights file, so one folder: {rel} vs {rel0}")
            self.path(rel).write_bytes(build(ReplayData(recorded), variant).SerializeToString())
            self._register(rel)

    def record_file(self, rel: str) -> RecordFileWriter:
        return RecordFileWriter(self.path(rel))

    def write_manifest(self, manifest: dict) -> Path:
        """Write the manifest into the staging folder (which a reader can then open, e.g. for a
        calibration run) without committing; ``commit`` writes it again, last."""
        manifest = dict(manifest)
        manifest[C.K_FILES] = dict(sorted(self.files.items()))
        mpath = self.stage / C.MANIFEST
        with open(mpath, "w") as f:
            yaml.safe_dump(manifest, f, sort_keys=False, width=120)
            f.flush()
            os.fsync(f.fileno())
        return self.stage

    def commit(self, manifest: dict) -> Path:
        """Write the manifest last, fsync, and move the staged folder into place."""
        (self.stage / C.JOURNAL).unlink(missing_ok=True)
        self.write_manifest(manifest)
        old = None
        if self.out.exists():
            old = self.out.with_name(self.out.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(self.out, old)
        os.replace(self.stage, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def abort(self):
        shutil.rmtree(self.stage, ignore_errors=True)
