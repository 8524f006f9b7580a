"""Plain text from a SWORD zText module, e.g. the World English Bible in Debian's ``sword-text-web``.

A zText module keeps each testament as ``{ot,nt}.bzs`` (block index: per block uint32 offset,
compressed size, uncompressed size) and ``{ot,nt}.bzz`` (zlib blocks of OSIS XML). We decompress
every block, drop footnotes and markup, and keep one paragraph per line.
"""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

from edgemoe.errors import EdgeMoEError

WEB_PACKAGE = "sword-text-web"
WEB_MODULE = "engWEB2015eb"

_NOTE = re.compile(r"<note\b.*?</note>", re.S)
_TITLE = re.compile(r"<title\b.*?</title>", re.S)
_PARA_END = re.compile(r'<div eID="[^"]*" type="x-p"/>|<lb\b[^>]*/>|<l\s[^>]*eID[^>]*/>')
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"[ \t\r\f\v]+")


class CorpusError(EdgeMoEError):
    """The text corpus could not be found or read."""


def _blocks(bzs: bytes, bzz: bytes):
    # bzs: [n_blocks, 3] uint32 little-endian (offset, compressed size, uncompressed size)
    for i in range(len(bzs) // 12):
        off, size, _ = struct.unpack_from("<III", bzs, i * 12)
        yield zlib.decompress(bzz[off:off + size]).decode("utf-8", "replace")


def osis_to_text(osis: str) -> str:
    """Strip OSIS markup; return paragraphs separated by newlines."""
    s = _NOTE.sub("", osis)
    s = _TITLE.sub("\n", s)
    s = _PARA_END.sub("\n", s)
    s = _TAG.sub("", s)
    lines = (_SPACE.sub(" ", line).strip() for line in s.split("\n"))
    return "\n".join(line for line in lines if line)


def read_ztext_module(module_dir: Path) -> str:
    """Read every testament of a zText module directory into plain text."""
    module_dir = Path(module_dir)
    parts = []
    for testament in ("ot", "nt"):
        bzs, bzz = module_dir / f"{testament}.bzs", module_dir / f"{testament}.bzz"
        if not bzs.exists() or not bzz.exists():
            continue
        parts.extend(osis_to_text(b) for b in _blocks(bzs.read_bytes(), bzz.read_bytes()))
    if not parts:
        raise CorpusError(f"no zText files (ot.bzs/ot.bzz) in {module_dir}; "
                          f"point --corpus at the module folder of {WEB_PACKAGE}")
    return "\n".join(p for p in parts if p)


def find_or_fetch_web(cache_dir: Path) -> Path:
    """Return the WEB module folder: installed, cached, or fetched with ``apt-get download``."""
    for root in (Path("/usr/share/sword"), Path(cache_dir) / "x/usr/share/sword"):
        mod = root / "modules/texts/ztext" / WEB_MODULE
        if mod.exists():
            return mod
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise CorpusError(f"{WEB_PACKAGE} is not installed and apt-get/dpkg-deb are missing; "
                          f"install {WEB_PACKAGE} or pass --corpus TEXTFILE")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        subprocess.run(["apt-get", "download", WEB_PACKAGE], cwd=tmp, check=True)
        deb = next(Path(tmp).glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(cache_dir / "x")], check=True)
    return find_or_fetch_web(cache_dir)
