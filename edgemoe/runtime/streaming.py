"""Print tokens as they are generated, decoding incrementally so multi-byte characters come out whole."""
from __future__ import annotations

import time

from edgemoe.runtime.engine import GenerationResult


def stream_text(rt, prompt: str, max_new_tokens: int, sampling, echo) -> GenerationResult:
    """Generate with ``rt`` and call ``echo(piece, nl=False)`` for each new piece of text."""
    prompt_ids = rt.encode(prompt)
    echo(prompt, nl=False)
    ids, shown = [], ""
    t0 = time.perf_counter()
    t_first = None
    for tok in rt.stream(prompt_ids, max_new_tokens, sampling):
        if t_first is None:
            t_first = time.perf_counter()
        ids.append(tok)
        text = rt.decode(ids)
        if not text.endswith("\ufffd"):          # wait for the rest of a multi-byte character
            echo(text[len(shown):], nl=False)
            shown = text
    t1 = time.perf_counter()
    return GenerationResult(prompt_ids, ids, rt.decode(ids), (t_first or t1) - t0, t1 - (t_first or t1))
