"""Small helpers for building ONNX graphs from numpy (onnx only; no torch)."""
from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MS_DOMAIN = "com.microsoft"

NP_TO_ONNX = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("float16"): TensorProto.FLOAT16,
              np.dtype("uint8"): TensorProto.UINT8, np.dtype("int64"): TensorProto.INT64,
              np.dtype("int32"): TensorProto.INT32}


# Initializers at least this large (counted as onnx.save_model counts its size_threshold:
# sys.getsizeof of their raw bytes) are external data; smaller ones stay inside the graph.
EXTERNAL_THRESHOLD = 256
_BYTES_OVERHEAD = sys.getsizeof(b"")
_BLOCK_BYTES = 16 << 20  # bytes per block when writing a transposed matrix


def _is_external(nbytes: int) -> bool:
    return nbytes + _BYTES_OVERHEAD >= EXTERNAL_THRESHOLD


def _check_rows(m: RowBlocks, rows: int):
    if rows != m.shape[0]:
        raise ValueError(f"row blocks gave {rows} rows, expected {m.shape[0]}")


@dataclass(frozen=True)
class RowBlocks:
    """A 2-D matrix that is never held whole: ``blocks()`` yields it as consecutive blocks of rows
    (each call starts again from row 0). A :class:`GraphBuilder` with ``data`` streams it to its
    external-data file; one without ``data`` (or a small one) joins the blocks into an array."""

    shape: tuple[int, int]
    dtype: np.dtype
    blocks: Callable[[], Iterator[np.ndarray]]

    @property
    def nbytes(self) -> int:
        return int(self.shape[0]) * int(self.shape[1]) * np.dtype(self.dtype).itemsize

    def array(self) -> np.ndarray:
        """The whole matrix (for small ones, and graphs built without external data)."""
        out = np.empty(self.shape, dtype=self.dtype)
        r = 0
        for blk in self.blocks():
            out[r:r + len(blk)] = blk
            r += len(blk)
        _check_rows(self, r)
        return out


def _external_tensor(name: str, dtype, shape, location: str, offset: int, nbytes: int) -> TensorProto:
    t = TensorProto()
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    t.dims.extend(int(d) for d in shape)
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def _pwrite_all(fd: int, buf: memoryview, pos: int):
    while len(buf):
        n = os.pwrite(fd, buf, pos)
        buf, pos = buf[n:], pos + n


class ExternalData:
    """One graph's external-data file (``<graph>.onnx.data``), written while the graph is built.

    Each large initializer is appended as soon as it is added (back to back, in initializer order,
    as ``onnx.save_model(save_as_external_data=True, all_tensors_to_one_file=True)`` lays them out)
    and the graph only references it, so weights are never copied into protobuf bytes. The file is
    created on the first write: a graph without large initializers has none.
    """

    def __init__(self, path, location: str):
        self.path, self.location = Path(path), location
        self.nbytes = 0
        self._f = None

    def _file(self):
        if self._f is None:
            self._f = open(self.path, "wb")
        return self._f

    def write(self, array: np.ndarray) -> tuple[int, int]:
        """Append ``array``'s bytes (C order, little-endian); returns (offset, length)."""
        a = np.ascontiguousarray(array)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        offset = self.nbytes
        self._file().write(memoryview(a.reshape(-1)).cast("B"))
        self.nbytes += a.nbytes
        return offset, a.nbytes

    def write_transposed(self, w: np.ndarray) -> tuple[int, int]:
        """Append the bytes of ``w.T`` for a 2-D ``w``, a block of its rows at a time (the full
        transposed copy is never held)."""
        n, k = w.shape
        rows = max(1, _BLOCK_BYTES // max(1, n * w.dtype.itemsize))
        offset = self.nbytes
        for r0 in range(0, k, rows):
            self.write(w[:, r0:r0 + rows].T)
        return offset, self.nbytes - offset

    def write_rows(self, m: RowBlocks) -> tuple[int, int]:
        """Append the bytes of the matrix ``m``, block by block."""
        offset = self.nbytes
        rows = 0
        for blk in m.blocks():
            self.write(np.asarray(blk, dtype=m.dtype))
            rows += len(blk)
        _check_rows(m, rows)
        return offset, self.nbytes - offset

    def write_rows_transposed(self, m: RowBlocks) -> tuple[int, int]:
        """Append the bytes of ``m.T`` (``[K, N]`` for ``m`` ``[N, K]``) from ``m``'s row blocks: a block
        ``[n0:n1]`` of ``m`` is the column range ``[n0:n1]`` of every row of ``m.T``, written in place."""
        n, k = m.shape
        item = np.dtype(m.dtype).itemsize
        offset = self.nbytes
        f = self._file()
        f.flush()
        f.truncate(offset + n * k * item)   # the region is sparse until every column is written
        fd, r0 = f.fileno(), 0
        for blk in m.blocks():
            t = np.ascontiguousarray(np.asarray(blk, dtype=m.dtype).T)   # [K, n1 - n0]
            if t.dtype.byteorder == ">":
                t = t.astype(t.dtype.newbyteorder("<"))
            for j in range(k):
                _pwrite_all(fd, memoryview(t[j]).cast("B"), offset + (j * n + r0) * item)
            r0 += t.shape[1]
        _check_rows(m, r0)
        f.seek(offset + n * k * item)
        self.nbytes = offset + n * k * item
        return offset, self.nbytes - offset

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class RecordingData:
    """An :class:`ExternalData` that also remembers each write's (offset, length), so that a graph
    built again by the same code, differing only in weightless nodes, can point at the same bytes
    through :class:`ReplayData` instead of writing them twice."""

    def __init__(self, data: ExternalData):
        self.data, self.location, self.writes = data, data.location, []

    def __getattr__(self, name):
        method = getattr(self.data, name)
        if not name.startswith("write"):
            return method

        def record(*args):
            self.writes.append(method(*args))
            return self.writes[-1]
        return record


class ReplayData:
    """Answers a rebuild's writes with the recorded (offset, length) of the first build, in order,
    writing nothing; a write of another length means the builds differ in weights (an error)."""

    def __init__(self, recorded: RecordingData):
        self.location, self._writes = recorded.location, iter(recorded.writes)

    def _next(self, nbytes: int) -> tuple[int, int]:
        offset, length = next(self._writes)
        if length != nbytes:
            raise ValueError(f"rebuilt graph writes {nbytes} bytes where the first build wrote {length}")
        return offset, length

    def write(self, array) -> tuple[int, int]:
        return self._next(np.asarray(array).nbytes)

    write_transposed = write

    def write_rows(self, m: RowBlocks) -> tuple[int, int]:
        return self._next(m.nbytes)

    write_rows_transposed = write_rows


class GraphBuilder:
    """Accumulates nodes and initializers; ``out = b.op("MatMul", x, w)`` returns the output name.

    With ``data`` (an :class:`ExternalData`), large initializers are written to it as they are added
    and referenced as external data; without it they are held inline (``onnx.save_model`` may still
    move them out when the model is saved).
    """

    def __init__(self, name: str, data: ExternalData | None = None):
        self.name = name
        self.data = data
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._ids = itertools.count()
        self.uses_ms = False

    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._ids)}"

    def input(self, name: str, elem_type: int, shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, value: str, name: str, elem_type: int, shape) -> str:
        self.nodes.append(helper.make_node("Identity", [value], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def const(self, array, name: str | None = None, shape=None) -> str:
        """An initializer holding ``array`` (a :class:`RowBlocks` too): inline, or streamed to
        ``data`` when it is large. ``shape``: the initializer's shape when it differs from the
        array's (same bytes, e.g. [N, G, gs] for row blocks of [N, G*gs])."""
        name = name or self.fresh("c")
        if isinstance(array, RowBlocks):
            if self.data is not None and _is_external(array.nbytes):
                return self._streamed(name, array.dtype, shape or array.shape, *self.data.write_rows(array))
            array = array.array()
        array = np.asarray(array)
        if shape is not None:
            array = array.reshape(shape)
        if self.data is not None and _is_external(array.nbytes):
            return self._streamed(name, array.dtype, array.shape, *self.data.write(array))
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def const_t(self, w, name: str | None = None) -> str:
        """An initializer holding the transpose of 2-D ``w`` (an array or :class:`RowBlocks`);
        streamed to ``data`` block by block when it is large, so no full transposed copy is made."""
        if not isinstance(w, RowBlocks):
            w = np.asarray(w)
        if self.data is None or not _is_external(w.nbytes):
            w = w.array() if isinstance(w, RowBlocks) else w
            return self.const(np.ascontiguousarray(w.T), name)
        name = name or self.fresh("c")
        write = self.data.write_rows_transposed if isinstance(w, RowBlocks) else self.data.write_transposed
        return self._streamed(name, w.dtype, tuple(w.shape)[::-1], *write(w))

    def _streamed(self, name: str, dtype, shape, offset: int, nbytes: int) -> str:
        self.inits.append(_external_tensor(name, dtype, shape, self.data.location, offset, nbytes))
        return name

    def external(self, name: str, dtype: str, shape, location: str, offset: int, nbytes: int) -> str:
        """An initializer whose bytes live in another file (an expert record), never copied."""
        self.inits.append(_external_tensor(name, dtype, shape, location, offset, nbytes))
        return name

    def op(self, op_type: str, *inputs: str, n_out: int = 1, domain: str = "", **attrs):
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, domain=domain or None, **attrs))
        if domain == MS_DOMAIN:
            self.uses_ms = True
        return outs[0] if n_out == 1 else outs

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        opsets = [helper.make_opsetid("", OPSET)]
        if self.uses_ms:
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        m = helper.make_model(graph, opset_imports=opsets, producer_name="edgemoe")
        m.ir_version = 8
        return m
