"""Background I/O: record chunks read by a thread pool into page-aligned buffers of their own.

Reads use O_DIRECT where the filesystem allows it (aligned buffer, offset and length: records and
chunks are page-aligned by the format), so the OS page cache neither hides the cost of a miss nor
holds a second copy outside the budget; elsewhere (tmpfs, ...) a buffered read is followed by
``posix_fadvise(DONTNEED)`` on the range. Each chunk is checked against its sha256 in the I/O
thread. Bytes, reads, time waited by the compute thread and I/O time overlapped are counted.
"""
from __future__ import annotations

import mmap
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor


from edgemoe.errors import PackageError
from edgemoe.package.reader import Package
from edgemoe.runtime.events import Event
from edgemoe.package.record_store import check_chunk


def aligned_buffer(n: int) -> mmap.mmap:
    """An anonymous, page-aligned mapping of n bytes: returned to the OS as soon as it is dropped."""
    return mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


class Loader:
    """Reads expert record chunks in the background; ``submit`` returns a Future of the buffer."""

    def __init__(self, pkg: Package, threads: int = 2, direct: bool = True, verify: bool = True,
                 read_delay_s: float = 0.0, events=None):
        self.pkg, self.layout, self.verify = pkg, pkg.layout, verify
        self.direct = direct and hasattr(os, "O_DIRECT")
        self.read_delay_s = read_delay_s        # to emulate a slower disk in tests and benchmarks
        self.events = events
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edgemoe-io")
        self._fds: dict[tuple[str, bool], int] = {}
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.reads = 0
        self.io_seconds = 0.0        # summed time inside reads (all threads)
        self.wait_seconds = 0.0      # time the compute thread blocked on a read
        self.used_direct = False

    def _fd(self, rel: str) -> tuple[int, bool]:
        with self._lock:
            for direct in ((True, False) if self.direct else (False,)):
                if (rel, direct) in self._fds:
                    return self._fds[(rel, direct)], direct
            path = self.pkg.path(rel)
            if self.direct:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
                    self._fds[(rel, True)] = fd
                    return fd, True
                except OSError:
                    self.direct = False
            fd = os.open(path, os.O_RDONLY)
            self._fds[(rel, False)] = fd
            return fd, False

    def _read(self, layer: int, expert: int, index: int) -> mmap.mmap:
        entry = self.pkg.experts[(layer, expert)]
        chunk = self.layout.chunks[index]
        t0 = time.perf_counter()
        buf = aligned_buffer(chunk.length)
        fd, direct = self._fd(entry.file)
        pos = entry.offset + chunk.offset
        try:
            n = os.preadv(fd, [buf], pos)
        except OSError as e:
            if direct and e.errno == 22:   # EINVAL: this filesystem refuses O_DIRECT after all
                with self._lock:
                    self.direct = False
                fd, direct = self._fd(entry.file)
                n = os.preadv(fd, [buf], pos)
            else:
                raise PackageError(f"{entry.file}: I/O error reading layer {layer} expert {expert} "
                                   f"({e.strerror}); check the storage device") from e
        if not direct:
            os.posix_fadvise(fd, pos, chunk.length, os.POSIX_FADV_DONTNEED)
        if self.read_delay_s:
            time.sleep(self.read_delay_s)
        check_chunk(entry, chunk, buf, n, layer, expert, self.verify)
        t1 = time.perf_counter()
        with self._lock:
            self.bytes_read += n
            self.reads += 1
            self.io_seconds += t1 - t0
            self.used_direct = self.used_direct or direct
        if self.events is not None:
            self.events(Event("read", t0, t1, layer=layer, expert=expert, bits=chunk.bits, nbytes=n))
        return buf

    def submit(self, layer: int, expert: int, index: int) -> Future:
        """Queue the read of chunk ``index`` (0-based) of an expert's record."""
        return self._pool.submit(self._read, layer, expert, index)

    def wait(self, fut: Future):
        """Block on a read, counting the time waited; re-raise its error in the caller."""
        t0 = time.perf_counter()
        try:
            return fut.result()
        finally:
            self.wait_seconds += time.perf_counter() - t0

    def close(self):
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

