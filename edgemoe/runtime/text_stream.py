"""Generated ids -> text deltas, for streaming: incremental detokenization and stop strings.

Byte-level BPE tokens need not end on a character boundary, and decoding tokens one at a time
loses the spaces and merges a tokenizer adds between them; so the whole generation is decoded each
time and only the part that is new (and ends on a whole character) is emitted. A stop string may
span several tokens: the tail that could still become one is held back until it either completes
(the text ends just before it; the stop string itself is never emitted) or stops matching.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"     # what a decoder yields for an incomplete UTF-8 sequence


class TextStream:
    """Feed token ids one at a time; each ``push`` returns the text that is safe to emit."""

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()):
        self.decode = decode
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.emitted = 0          # characters of the decoded text already returned
        self.text = ""            # the whole decoded text (up to the stop string, once found)
        self.stopped = False      # a stop string was found

    def _held(self, text: str) -> int:
        """Characters at the end of ``text`` that could be the start of a stop string."""
        hold = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:n]):
                    hold = n
                    break
        return hold

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(int(token))
        text = self.decode(self.ids)
        if self.stop:
            # search from a little before what was emitted: a stop string may straddle it
            start = max(self.emitted - max(len(s) for s in self.stop), 0)
            hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.stopped = True
                self.text = text[:min(hits)]
                out = self.text[self.emitted:]
                self.emitted = len(self.text)
                return out
        end = len(text) - self._held(text)
        while end > self.emitted and text[end - 1] == REPLACEMENT:   # an unfinished character
            end -= 1
        self.text = text
        out = text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return out

    def flush(self) -> str:
        """At the end of the generation: what was held back (a partial stop string is text)."""
        if self.stopped:
            return ""
        out = self.text[self.emitted:]
        self.emitted = len(self.text)
        return out
