"""Streamed reading of a Hugging Face checkpoint folder: config.json + *.safetensors (+ tokenizer.json).

Tensors are read one at a time straight from the shard files (numpy, no torch), so an export never
holds more than the tensors it is working on. fp32, fp16, bf16 and float8 (e4m3, e8m0) sources all come out float32; FP8 weights' block
scales (``weight_scale_inv``) are applied by the weight map (``exporters.fp8``).
"""
from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgemoe.errors import CheckpointError

# safetensors dtype -> (numpy dtype, bytes per element); bf16 is read as uint16 and widened, the
# 8-bit floats as bytes through a table (no ml_dtypes, no torch).
_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2),
           "F64": (np.float64, 8), "I64": (np.int64, 8), "I32": (np.int32, 4),
           "U8": (np.uint8, 1), "BOOL": (np.bool_, 1),
           "F8_E4M3": (np.uint8, 1), "F8_E8M0": (np.uint8, 1)}
_FLOATS = ("F32", "F16", "BF16", "F64", "F8_E4M3", "F8_E8M0")


def _e4m3fn_table() -> np.ndarray:
    """float32 value of every float8 e4m3fn byte (OCP FP8: bias 7, no infinities, 0x7F/0xFF NaN)."""
    b = np.arange(256)
    sign = np.where(b & 0x80, -1.0, 1.0)
    e, m = (b >> 3) & 0xF, b & 0x7
    val = np.where(e == 0, m / 8.0 * 2.0 ** -6, (1 + m / 8.0) * 2.0 ** (e - 7.0))
    val = np.where((e == 0xF) & (m == 7), np.nan, val)
    return (sign * val).astype(np.float32)


def _e8m0_table() -> np.ndarray:
    """float32 value of every e8m0 byte (a power of two 2^(b - 127); 0xFF is NaN)."""
    t = np.full(256, np.nan, dtype=np.float32)
    t[:255] = np.exp2(np.arange(255, dtype=np.float64) - 127)
    return t


_FP8_TABLES = {"F8_E4M3": _e4m3fn_table(), "F8_E8M0": _e8m0_table()}


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


_WIDEN_CHUNK = 1 << 20  # elements widened per step


def _widen_in_place(out: np.ndarray, raw: np.ndarray, shift: bool):
    """``out[k] = raw[k]`` (``<< 16`` when ``shift``: bf16 bits -> float32 bits) for every k, where
    ``raw`` (2-byte items) is the upper half of ``out``'s own 4-byte buffer.

    Widening runs front to back in chunks: chunk ``[i, j)`` writes 2-byte slots ``[2i, 2j)`` and
    reads slots ``[n + i, n + j)``, so it never clobbers a later chunk's source (``2j <= n + j``);
    only the last chunks, whose writes reach their own source (``2j > n + i``), copy it first.
    """
    n = out.size
    for i in range(0, n, _WIDEN_CHUNK):
        j = min(n, i + _WIDEN_CHUNK)
        src = raw[i:j]
        if 2 * j > n + i:
            src = src.copy()
        out[i:j] = src
        if shift:
            out[i:j] <<= 16


class Checkpoint:
    """A Hugging Face checkpoint directory, indexed but not loaded.

    Parameters
    ----------
    path : folder with ``config.json`` and ``model.safetensors`` or ``model.safetensors.index.json``
        plus its shards (any ``*.safetensors`` are indexed when there is no index file).
    weights : False reads config.json only (no shards: ``tensors`` starts empty; see
        ``exporters.config_plan``, which fills it with the shapes the config implies)
    """

    def __init__(self, path, weights: bool = True):
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
        self.shards: list[Path] = []
        if weights:
            self._index_shards()

    def has_weights(self) -> bool:
        """Whether the folder holds any safetensors weights (an index or a shard)."""
        return (self.path / "model.safetensors.index.json").exists() or any(self.path.glob("*.safetensors"))

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
            root = self.path.resolve()
            outside = [n for n in names if not isinstance(n, str)
                       or root not in (self.path / n).resolve().parents]
            if outside:
                raise CheckpointError(f"{index.name} lists shards outside {self.path}: {outside[:3]}; "
                                      f"shard names must stay inside the checkpoint folder")
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

    def _checked(self, name: str) -> tuple[TensorInfo, int]:
        """The tensor's index entry and element count, after checking its byte length."""
        info = self._info(name)
        count = int(np.prod(info.shape, dtype=np.int64)) if info.shape else 1
        if count * _DTYPES[info.dtype][1] != info.nbytes:
            raise CheckpointError(f"{info.file.name}: tensor {name} has {info.nbytes} bytes for "
                                  f"shape {info.shape} {info.dtype}; the shard is corrupt")
        return info, count

    def read(self, name: str) -> np.ndarray:
        """Read one tensor as float32 (integers keep their dtype), without touching the others.

        The bytes are read straight into the result's own buffer: a bf16 or fp16 tensor into the
        upper half of its float32 result, then widened in place, so reading a tensor never holds
        more than the result (no bytes object, no intermediate arrays, no final copy).
        """
        info, count = self._checked(name)
        return self._read_elems(info, 0, count).reshape(info.shape)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of a tensor (along its first axis), exactly as ``read(name)[start:stop]``
        but reading only their bytes."""
        info, _ = self._checked(name)
        if not info.shape or not 0 <= start <= stop <= info.shape[0]:
            raise ValueError(f"rows [{start}, {stop}) are not in tensor {name} of shape {info.shape}")
        row = int(np.prod(info.shape[1:], dtype=np.int64))
        return self._read_elems(info, start * row, (stop - start) * row).reshape(
            (stop - start, *info.shape[1:]))

    def row_blocks(self, name: str, block_bytes: int = 16 << 20) -> Iterator[np.ndarray]:
        """``read(name)`` as consecutive blocks of rows of about ``block_bytes`` each (as read)."""
        info, _ = self._checked(name)
        rows = info.shape[0] if info.shape else 0
        per_row = int(np.prod(info.shape[1:], dtype=np.int64)) * self.dtype(name).itemsize
        step = max(1, block_bytes // max(1, per_row))
        for r0 in range(0, rows, step):
            yield self.read_rows(name, r0, min(rows, r0 + step))

    def stored_dtype(self, name: str) -> str:
        """The tensor's safetensors dtype ("BF16", "F8_E4M3", ...)."""
        return self._info(name).dtype

    def dtype(self, name: str) -> np.dtype:
        """The dtype ``read(name)`` returns: float32 for every float source, else the stored one."""
        stored = self._info(name).dtype
        return np.dtype(np.float32) if stored in _FLOATS else np.dtype(_DTYPES[stored][0])

    def _read_elems(self, info: TensorInfo, first: int, count: int) -> np.ndarray:
        """Elements ``[first, first + count)`` of a tensor, flat, converted as ``read`` documents."""
        np_dtype, itemsize = _DTYPES[info.dtype]
        widen = info.dtype in ("BF16", "F16")
        out = np.empty(count, dtype=np.uint32 if info.dtype == "BF16" else
                       np.float32 if widen else np_dtype)
        raw = out.view(np.uint16 if info.dtype == "BF16" else np.float16)[count:] if widen else out
        nbytes = count * itemsize
        with open(info.file, "rb", buffering=0) as f:
            f.seek(info.start + first * itemsize)
            view, got = memoryview(raw).cast("B"), 0
            while got < nbytes:
                n = f.readinto(view[got:])
                if not n:
                    raise CheckpointError(f"{info.file.name} is truncated while reading {info.name}; "
                                          f"re-download it")
                got += n
        if info.dtype in _FP8_TABLES:
            return _FP8_TABLES[info.dtype][out]
        if widen:
            _widen_in_place(out, raw, shift=info.dtype == "BF16")
        if info.dtype == "BF16":
            return out.view(np.float32)
        if info.dtype == "F64":
            return out.astype(np.float32)
        return out

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
