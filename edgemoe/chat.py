"""`edgemoe chat`: a multi-turn terminal chat on the batched engine and the package's template.

Each turn renders the whole conversation with the chat template; the engine keeps the previous
turn's KV (``Batch``'s prompt reuse), so only the new message is prefilled. Ctrl-C stops a reply
(what was written so far stays in the conversation) without leaving the chat; /reset forgets the
conversation; /exit (or Ctrl-D) leaves.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from edgemoe.runtime.chat_template import ChatTemplate
from edgemoe.runtime.sampling import SamplingConfig
from edgemoe.runtime.text_stream import TextStream

HELP = "commands: /reset (forget the conversation), /exit (or Ctrl-D); Ctrl-C stops a reply"


class ChatSession:
    """The conversation and the engine's batch it runs in (one sequence at a time)."""

    def __init__(self, rt, template: ChatTemplate, system: str | None = None,
                 max_new_tokens: int = 512, sampling: SamplingConfig | None = None,
                 context: int | None = None):
        self.rt, self.template, self.system = rt, template, system
        self.max_new_tokens, self.sampling = max_new_tokens, sampling or SamplingConfig()
        self.context = context or rt.kv.capacity
        self.batch = rt.batch()
        self.reset()

    def reset(self):
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.batch.drop_prefixes()

    def reply(self, user: str, write: Callable[[str], None]) -> dict:
        """Answer ``user``, writing text as it comes; returns figures of the turn. KeyboardInterrupt
        during the reply stops it (the partial reply is kept)."""
        self.messages.append({"role": "user", "content": user})
        ids = self.rt.encode(self.template.render(self.messages, add_generation_prompt=True), add_bos=False)
        room = self.context - len(ids)
        if room < 1:
            self.messages.pop()
            return {"error": f"the conversation ({len(ids)} tokens) fills the {self.context}-token "
                             f"context; /reset to start over"}
        stream = TextStream(self.rt.decode)
        sid = self.batch.add(ids, min(self.max_new_tokens, room), self.sampling)
        t0, t_first, n, stopped = time.perf_counter(), None, 0, False
        try:
            while sid in self.batch.seqs:
                for _, tok in self.batch.step():
                    t_first = t_first or time.perf_counter()
                    n += 1
                    if tok not in self.rt.arch.eos_token_ids:
                        write(stream.push(tok))
        except KeyboardInterrupt:
            self.batch.cancel(sid)
            stopped = True
        write(stream.flush())
        seq = self.batch.finished.pop(sid)
        self.messages.append({"role": "assistant", "content": stream.text})
        t1 = time.perf_counter()
        decode_s = t1 - (t_first or t1)
        return {"tokens": n, "stopped": stopped, "prompt_tokens": len(ids), "reused_tokens": seq.reused,
                "first_token_s": (t_first or t1) - t0,
                "tokens_per_s": (n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0}


def run_chat(session: ChatSession, read: Callable[[str], str], write: Callable[[str], None],
             info: Callable[[str], None]):
    """The read-reply loop (``read`` raises EOFError at the end of input)."""
    info(HELP)
    while True:
        try:
            line = read(">>> ")
        except EOFError:
            info("")
            return
        except KeyboardInterrupt:   # Ctrl-C at the prompt: a fresh line, as in a shell
            info("")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit", "/bye"):
            return
        if text == "/reset":
            session.reset()
            info("[conversation cleared]")
            continue
        if text.startswith("/") and text.split()[0] in ("/help", "/?"):
            info(HELP)
            continue
        r = session.reply(text, write)
        write("\n")
        if "error" in r:
            info(f"[{r['error']}]")
            continue
        info(f"[{r['tokens']} tokens, {r['tokens_per_s']:.1f} tok/s, first token "
             f"{r['first_token_s'] * 1000:.0f} ms, {r['reused_tokens']}/{r['prompt_tokens']} prompt "
             f"tokens reused" + (", stopped" if r["stopped"] else "") + "]")
