"""`edgemoe chat` as a user runs it: turns on stdin, replies and figures on the terminal; the
second turn reuses the first's KV; /reset forgets; /exit leaves. Ctrl-C stopping a reply is
checked on the session object (a terminal's SIGINT cannot be typed through a pipe reliably)."""
from __future__ import annotations

import re
import subprocess
import sys

from edgemoe.chat import ChatSession
from edgemoe.runtime.chat_template import ChatTemplate
from edgemoe.runtime.engine import Runtime


def test_chat_turns_reuse_and_reset(demo_package):
    turns = "Who made the heavens?\nAnd the earth?\n/reset\nWho made the heavens?\n/exit\n"
    p = subprocess.run([sys.executable, "-m", "edgemoe.cli", "chat", str(demo_package), "--greedy",
                        "--max-new-tokens", "12", "--ctx-size", "512"],
                       input=turns, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    stats = re.findall(r"\[(\d+) tokens, ([\d.]+) tok/s, first token \d+ ms, (\d+)/(\d+) prompt tokens reused",
                       p.stderr)
    assert len(stats) == 3, p.stderr
    (n1, _, r1, p1), (n2, _, r2, p2), (n3, _, r3, p3) = [tuple(map(float, s)) for s in stats]
    assert r1 == 0 and r2 >= p1 and p2 > p1          # turn 2 prefilled only its new part
    assert r3 == 0 and p3 == p1                       # /reset forgot the conversation
    assert "[conversation cleared]" in p.stderr
    replies = [line for line in p.stdout.split(">>> ") if line.strip()]
    assert replies[0] == replies[2]                   # the same first turn, greedy, gives the same reply


def test_ctrl_c_stops_a_reply_and_keeps_the_chat(demo_package):
    rt = Runtime(demo_package, context=256)
    s = ChatSession(rt, ChatTemplate.of_package(rt.pkg), max_new_tokens=100)
    out = []

    def write(text):
        out.append(text)
        if len(out) == 5:
            raise KeyboardInterrupt          # what Ctrl-C raises in the middle of a reply
    r = s.reply("Who made the heavens?", write)
    assert r["stopped"] and r["tokens"] < 100
    assert s.messages[-1]["role"] == "assistant" and s.messages[-1]["content"] == "".join(out)
    r2 = s.reply("And then?", lambda t: None)
    assert not r2["stopped"] and r2["tokens"] >= 1 and len(s.messages) == 4


def test_a_full_context_is_reported_not_crashed(demo_package):
    rt = Runtime(demo_package, context=32)
    s = ChatSession(rt, ChatTemplate.of_package(rt.pkg), context=32)
    r = s.reply("word " * 60, lambda t: None)
    assert "fills the 32-token context" in r["error"] and s.messages == []
