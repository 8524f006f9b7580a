"""Reads expert records from a package: a level is one contiguous prefix read, an upgrade reads only
the missing chunks. Every chunk is checked against its sha256 as it lands; bytes are counted.
"""
from __future__ import annotations

import hashlib
import os
import threading

import numpy as np

from edgemoe.errors import CorruptRecordError
from edgemoe.package.reader import Package  # noqa: F401  (type of ExpertStore.pkg)


def check_chunk(entry, chunk, data, got: int, layer: int, expert: int, verify: bool = True) -> None:
    """Raise CorruptRecordError if a chunk read came back short or does not match its sha256."""
    if got != chunk.length:
        raise CorruptRecordError(f"{entry.file}: short read for layer {layer} expert {expert} "
                                 f"({got} of {chunk.length} bytes); the package is truncated")
    if verify and hashlib.sha256(data).hexdigest() != entry.level(chunk.bits).sha256:
        raise CorruptRecordError(f"{entry.file}: layer {layer} expert {expert} level {chunk.bits} "
                                 f"does not match its sha256: the record is corrupt; re-copy or "
                                 f"re-export the package")


class ExpertStore:
    """Positional reads (``os.pread``) of record chunks; thread-safe, one fd per record file."""

    def __init__(self, pkg: Package, verify: bool = True):
        self.pkg = pkg
        self.layout = pkg.layout
        self.verify = verify
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.reads = 0

    def _fd(self, rel: str) -> int:
        with self._lock:
            if rel not in self._fds:
                self._fds[rel] = os.open(self.pkg.path(rel), os.O_RDONLY)
            return self._fds[rel]

    def read(self, layer: int, expert: int, bits: int, buf: np.ndarray | None = None,
             have_bits: int = 0) -> np.ndarray:
        """Return a buffer holding the record prefix for level ``bits``.

        ``buf``/``have_bits``: a record buffer (``layout.length`` bytes) already holding level
        ``have_bits``; only the chunks above it are read into it (an upgrade).
        """
        entry = self.pkg.experts[(layer, expert)]
        lo = self.layout.prefix_length(have_bits) if have_bits else 0
        hi = self.layout.prefix_length(bits)
        if buf is None:
            if have_bits:
                raise ValueError("an upgrade (have_bits) needs the buffer that holds the lower level")
            buf = np.empty(self.layout.length, dtype=np.uint8)
        if hi > lo:
            view = memoryview(buf)[lo:hi]
            n = os.preadv(self._fd(entry.file), [view], entry.offset + lo)
            with self._lock:
                self.bytes_read += max(n, 0)
                self.reads += 1
            for chunk in self.layout.chunks:
                if lo <= chunk.offset < hi:
                    start = chunk.offset - lo
                    landed = min(max(n - start, 0), chunk.length)   # of this chunk's bytes
                    check_chunk(entry, chunk, view[start:start + chunk.length], landed,
                                layer, expert, self.verify)
        return buf

    def close(self):
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
