"""Checkpoints by name: a Hugging Face hub id (``openai/gpt-oss-20b``) resolved through
huggingface_hub's local cache, never the network (export runs on workstations that may be
offline; downloading is the user's explicit step)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from edgemoe.errors import CheckpointError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def resolve_source(src, revision: str | None = None) -> Path:
    """A checkpoint folder: ``src`` itself when it exists (or is not shaped like a hub id), else
    the cached snapshot of hub id ``src`` (``HF_HUB_CACHE`` / ``HF_HOME`` honoured; with
    ``local_files_only``, so ``HF_HUB_OFFLINE`` or not, nothing is fetched). A hub id that is not
    cached is a CheckpointError saying how to download it."""
    path = Path(src).expanduser()
    if path.exists() or not HUB_ID.match(str(src)):
        return path
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise CheckpointError(f"{src} is not a folder here; to export a hub id from the Hugging Face "
                              f"cache, pip install huggingface_hub (or pass the checkpoint's folder)") from None
    try:
        return Path(snapshot_download(str(src), revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        from huggingface_hub.constants import HF_HUB_CACHE
        offline = " (HF_HUB_OFFLINE is set: download on a machine that is online)" \
            if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") else ""
        raise CheckpointError(
            f"{src} is neither a folder here nor in the Hugging Face cache ({HF_HUB_CACHE}); "
            f"download it first with `huggingface-cli download {src}` (or only its config for a "
            f"--dry-run: `huggingface-cli download {src} config.json`){offline}, then run this "
            f"again") from None
