"""An output folder that is written completely or not at all.

Files go into a hidden staging folder next to ``--out``; ``commit`` moves them in at the end, and
``discard`` (on any error) removes the staging folder, so a failed profile leaves nothing behind.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from edgemoe.errors import ConfigError


def check_out(out) -> Path:
    """Refuse an ``--out`` that cannot be written, before anything runs (nothing is created)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the report")
    probe = out if out.exists() else out.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"cannot write to --out {out}: {probe} is a file, not a folder; choose a "
                          f"writable folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to --out {out}: {probe} is not writable; choose a writable "
                          f"folder")
    return out


class Staging:
    def __init__(self, out):
        self.out = check_out(out)
        parent = self.out.parent
        self._made = []                              # parent folders we create (removed on discard)
        p = parent
        while not p.exists():
            self._made.append(p)
            p = p.parent
        self.dir = parent / f".{self.out.name}.partial-unset"
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=parent))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.dir, 0o777 & ~umask)         # mkdtemp's 0700 would stick after the rename
        except OSError as e:
            self.discard()
            raise ConfigError(f"cannot write to --out {self.out}: {e.strerror or e}; choose a "
                              f"writable folder") from e
        if self.out.exists() and not os.access(self.out, os.W_OK):
            self.discard()
            raise ConfigError(f"cannot write to --out {self.out}: permission denied; choose a "
                              f"writable folder")

    def path(self, rel: str) -> Path:
        p = self.dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def commit(self) -> list[Path]:
        """Move everything staged into ``out``; returns the final paths."""
        files = sorted(p for p in self.dir.rglob("*") if p.is_file())
        if not self.out.exists():
            os.replace(self.dir, self.out)
            return [self.out / p.relative_to(self.dir) for p in files]
        out = []
        for p in files:
            dst = self.out / p.relative_to(self.dir)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, dst)
            out.append(dst)
        shutil.rmtree(self.dir, ignore_errors=True)
        return out

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        for p in self._made:                         # deepest first
            try:
                p.rmdir()
            except OSError:
                break
