"""Sampling settings, logprobs, streamed text with stop strings, and chat templates (no model)."""
from __future__ import annotations

import numpy as np
import pytest

from edgemoe.errors import ConfigError
from edgemoe.runtime.chat_template import FALLBACK_TEMPLATE, ChatTemplate, TemplateError
from edgemoe.runtime.sampling import Sampler, SamplingConfig, log_softmax, token_logprobs
from edgemoe.runtime.text_stream import TextStream


def test_min_p_drops_the_unlikely_tail():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    s = Sampler(SamplingConfig(greedy=False, min_p=0.35, seed=0))     # keeps p >= 0.175
    drawn = {s(logits) for _ in range(400)}
    assert drawn == {0, 1}


def test_penalties_follow_openai_formula():
    s = Sampler(SamplingConfig(presence_penalty=0.5, frequency_penalty=0.25))
    out = s.penalise(np.zeros(5, np.float32), [1, 1, 3])
    assert np.allclose(out, [0, -1.0, 0, -0.75, 0])
    # greedy with a penalty moves off a repeated token
    logits = np.array([0.0, 1.0, 0.9], np.float32)
    assert Sampler(SamplingConfig(frequency_penalty=0.5))(logits, [1]) == 2
    assert Sampler(SamplingConfig())(logits, [1]) == 1


def test_seeded_sampling_repeats_and_seeds_differ():
    logits = np.random.default_rng(1).normal(size=64)

    def draw(seed):
        s = Sampler(SamplingConfig(greedy=False, seed=seed))
        return [s(logits) for _ in range(8)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


@pytest.mark.parametrize("bad", [dict(min_p=1.5), dict(presence_penalty=3), dict(frequency_penalty=-2.5)])
def test_bad_sampling_values_are_refused(bad):
    with pytest.raises(ConfigError):
        SamplingConfig(**bad)


def test_token_logprobs_are_log_softmax_and_top_sorted():
    logits = np.array([1.0, 3.0, 2.0, -1.0])
    lp, top = token_logprobs(logits, 2, top=3)
    ref = np.log(np.exp(logits) / np.exp(logits).sum())
    assert lp == pytest.approx(ref[2])
    assert [i for i, _ in top] == [1, 2, 0]
    assert [v for _, v in top] == pytest.approx(ref[[1, 2, 0]])
    assert np.exp(log_softmax(logits)).sum() == pytest.approx(1.0)


class _Vocab:
    """A toy detokenizer: each id is a fixed byte string; bytes join, then decode as UTF-8."""

    def __init__(self, pieces):
        self.pieces = pieces

    def __call__(self, ids):
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def _run(stream, ids):
    return "".join(stream.push(i) for i in ids) + stream.flush()


def test_stop_string_across_tokens_is_not_emitted():
    v = _Vocab([b"Hello", b" wor", b"ld", b"\n\nU", b"ser:", b" more"])
    s = TextStream(v, stop=["\n\nUser:"])
    out = [s.push(i) for i in (0, 1, 2, 3)]
    assert "".join(out) == "Hello world"          # "\n\nU" held back: it may start the stop string
    assert s.push(4) == "" and s.stopped
    assert s.push(5) == "" and s.flush() == ""
    assert s.text == "Hello world"


def test_a_partial_stop_string_that_breaks_off_is_released():
    v = _Vocab([b"a", b"\n\nUs", b"ually"])
    s = TextStream(v, stop=["\n\nUser:"])
    assert s.push(0) == "a"
    assert s.push(1) == ""                         # could still become the stop string
    assert s.push(2) == "\n\nUsually"              # it did not
    assert not s.stopped


def test_split_utf8_characters_wait_for_their_last_byte():
    e = "é".encode()                               # two bytes, in two tokens
    v = _Vocab([b"caf", e[:1], e[1:], b"!"])
    s = TextStream(v)
    assert [s.push(i) for i in range(4)] == ["caf", "", "é", "!"]


def test_held_text_is_flushed_at_the_end():
    v = _Vocab([b"x", b"##"])
    s = TextStream(v, stop=["###"])
    assert _run(s, [0, 1]) == "x##"


def test_stop_string_inside_one_token_cuts_mid_token():
    v = _Vocab([b"ab", b"cSTOPde"])
    s = TextStream(v, stop=["STOP"])
    assert _run(s, [0, 1]) == "abc" and s.stopped


MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Who?"}]


def test_fallback_template_renders_plain_turns():
    t = ChatTemplate(None)
    assert t.is_fallback and t.source == FALLBACK_TEMPLATE
    out = t.render(MSGS)
    assert out == "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: Who?\n\nAssistant:"
    assert not t.render(MSGS, add_generation_prompt=False).endswith("Assistant:")


def test_package_template_gets_special_tokens_and_content_parts():
    src = ("{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}"
           "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    t = ChatTemplate(src, {"bos_token": "<s>", "eos_token": "</s>"})
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert t.render(msgs) == "<s><|user|>ab</s><|assistant|>"


def test_raise_exception_and_bad_messages_are_config_errors():
    t = ChatTemplate("{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}ok")
    assert t.render([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(TemplateError, match="user first"):
        t.render([{"role": "assistant", "content": "x"}])
    with pytest.raises(ConfigError, match="role"):
        t.render([{"role": "wizard", "content": "x"}])
    with pytest.raises(ConfigError, match="text part"):
        t.render([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
    with pytest.raises(ConfigError, match="non-empty list"):
        t.render([])


def test_the_sandbox_refuses_unsafe_templates():
    t = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(TemplateError):
        t.render([{"role": "user", "content": "x"}])
    with pytest.raises(ConfigError, match="does not parse"):
        ChatTemplate("{% for %}")
