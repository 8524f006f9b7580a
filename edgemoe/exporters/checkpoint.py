"""Streamed reading of a Hugging Face checkpoint folder: config.json + *.safetensors (+ tokenizer.json).

Tensors are read one at a time straight from the shard files (numpy, no torch), so an export never
holds more than the tensors it is working on. fp32, fp16 and bf16 sources all come out float32.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgemoe.errors import CheckpointError

# safetensors dtype -> (numpy dtype, bytes per element); bf16 is read as uint16 and widened.
_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2),
           "F64": (np.float64, 8), "I64": (np.int64, 8), "I32": (np.int32, 4),
           "U8": (np.uint8, 1), "BOOL": (np.bool_, 1)}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def _read_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path.name} is truncated ({size} bytes); re-download or re-save it")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 << 20:
            raise CheckpointError(f"{path.name} has a corrupt or truncated safetensors header; "
                                  f"re-download or re-save it")
        try:
            header = json.loads(f.read(n))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path.name}: unreadable safetensors header ({e}); re-download it") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: safetensors header is not a JSON object; re-download it")
    return header, 8 + n


class Checkpoint:
    """A Hugging Face checkpoint directory, indexed but not loaded.

    Parameters
    ----------
    path : folder with ``config.json`` and ``model.safetensors`` or ``model.safetensors.index.json``
        plus its shards (any ``*.safetensors`` are indexed when there is no index file).
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"checkpoint folder {self.path} does not exist; pass the folder that "
                                  f"holds config.json and *.safetensors")
        cfg = self.path / "config.json"
        if not cfg.exists():
            raise CheckpointError(f"no config.json in {self.path}; export needs a Hugging Face checkpoint "
                                  f"folder (config.json + *.safetensors)")
        try:
            self.config = json.loads(cfg.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg} is not valid JSON ({e})") from e
        if not isinstance(self.config, dict):
            raise CheckpointError(f"{cfg} is not a JSON object; re-download config.json")
        self.tensors: dict[str, TensorInfo] = {}
        self._index_shards()

    def _shard_files(self) -> list[Path]:
        index = self.path / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index} is malformed ({e}); re-save the checkpoint") from e
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointError(f"{index}: weight_map is not a mapping of tensor name to shard "
                                      f"file; re-save the checkpoint")
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if not (self.path / n).exists()]
            if missing:
                raise CheckpointError(f"shards listed in {index.name} are missing: {missing}; "
                                      f"download every shard into {self.path}")
            self._index_map = weight_map
            return [self.path / n for n in names]
        self._index_map = None
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"no *.safetensors in {self.path}; convert .bin checkpoints with "
                                  f"transformers' save_pretrained(safe_serialization=True)")
        return files

    def _index_shards(self):
        self.shards = self._shard_files()
        for shard in self.shards:
            header, base = _read_header(shard)
            size = shard.stat().st_size
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                try:
                    dtype, shape, (lo, hi) = meta["dtype"], tuple(meta["shape"]), meta["data_offsets"]
                    lo, hi = int(lo), int(hi)
                except (KeyError, TypeError, ValueError):
                    raise CheckpointError(f"{shard.name}: header entry of tensor {name} is malformed "
                                          f"(needs dtype, shape, data_offsets); re-download it") from None
                if dtype not in _DTYPES:
                    raise CheckpointError(f"{shard.name}: tensor {name} has unsupported dtype "
                                          f"{dtype}; supported: {sorted(_DTYPES)}")
                if base + hi > size:
                    raise CheckpointError(f"{shard.name} is truncated: tensor {name} ends at byte "
                                          f"{base + hi} but the file has {size}; re-download it")
                self.tensors[name] = TensorInfo(name, shard, dtype, shape, base + lo, hi - lo)
        if self._index_map is not None:
            missing = sorted(set(self._index_map) - set(self.tensors))
            if missing:
                raise CheckpointError(f"tensors listed in the index are missing from their shards: "
                                      f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                                      f"re-download the checkpoint")

    def names(self) -> list[str]:
        return sorted(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info(name).shape

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"tensor {name!r} is missing from the checkpoint in {self.path}; "
                                  f"is it the family its config.json says it is?") from None

    def read(self, name: str) -> np.ndarray:
        """Read one tensor as float32 (integers keep their dtype), without touching the others."""
        info = self._info(name)
        np_dtype, itemsize = _DTYPES[info.dtype]
        count = int(np.prod(info.shape, dtype=np.int64)) if info.shape else 1
        if count * itemsize != info.nbytes:
            raise CheckpointError(f"{info.file.name}: tensor {name} has {info.nbytes} bytes for "
                                  f"shape {info.shape} {info.dtype}; the shard is corrupt")
        with open(info.file, "rb") as f:
            f.seek(info.start)
            raw = f.read(info.nbytes)
        if len(raw) != info.nbytes:
            raise CheckpointError(f"{info.file.name} is truncated while reading {name}; re-download it")
        arr = np.frombuffer(raw, dtype=np_dtype, count=count).reshape(info.shape)
        if info.dtype == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        elif np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
        return np.array(arr)  # own, writable copy

    def fingerprint(self) -> str:
        """sha256 over config.json and every shard's header and size (cheap; identifies the source)."""
        h = hashlib.sha256((self.path / "config.json").read_bytes())
        for shard in self.shards:
            header, base = _read_header(shard)
            h.update(shard.name.encode())
            h.update(json.dumps(header, sort_keys=True).encode())
            h.update(str(shard.stat().st_size).encode())
        return h.hexdigest()

    @property
    def source_bytes(self) -> int:
        return sum(s.stat().st_size for s in self.shards)
