"""Chat messages -> prompt text with the checkpoint's own jinja template, as transformers renders it.

The exporter copies the template (``chat_template.jinja`` or ``tokenizer_config.json``'s
``chat_template``) and the special tokens into the package. Rendering uses jinja2's immutable
sandbox with transformers' settings (trim_blocks, lstrip_blocks, loop controls) and globals
(``raise_exception``, ``strftime_now``, a ``tojson`` that keeps non-ASCII text), and passes
``messages``, ``add_generation_prompt``, ``bos_token``/``eos_token`` (and the other special tokens),
``tools`` and any extra keyword arguments.

A package without a template gets ``FALLBACK_TEMPLATE``: plain "System:/User:/Assistant:" turns
separated by blank lines, ending with "Assistant:" when a reply is wanted (no special tokens, so
it suits a base model too).
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from edgemoe.errors import ConfigError

FALLBACK_TEMPLATE = (
    "{% for m in messages %}"
    "{{ m['role'] | capitalize }}: {{ m['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
ROLES = ("system", "user", "assistant", "tool", "developer")


class TemplateError(ConfigError):
    """The chat template refused the messages (its ``raise_exception``) or failed to render."""


def _raise(message):
    raise TemplateError(f"the chat template refused the messages: {message}")


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


@lru_cache(maxsize=8)
def compile_template(source: str):
    """The template compiled in the sandbox; ConfigError if it does not parse."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"the chat template does not parse (line {e.lineno}: {e.message}); "
                          f"fix chat_template in the checkpoint's tokenizer_config.json and re-export") from None


def normalize_messages(messages) -> list[dict]:
    """OpenAI-style messages -> [{"role", "content": str, ...}]: content parts of type "text" are
    joined; anything else is refused (this runtime is text only)."""
    if not isinstance(messages, list) or not messages:
        raise ConfigError("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ConfigError(f"messages[{i}] must be an object with a string 'role'")
        if m["role"] not in ROLES:
            raise ConfigError(f"messages[{i}].role {m['role']!r} is not one of {', '.join(ROLES)}")
        content = m.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):
            parts = []
            for j, p in enumerate(content):
                if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise ConfigError(f"messages[{i}].content[{j}] is not a text part; this model "
                                      f"takes text only ({{\"type\": \"text\", \"text\": ...}})")
                parts.append(p["text"])
            content = "".join(parts)
        elif not isinstance(content, str):
            raise ConfigError(f"messages[{i}].content must be a string or a list of text parts")
        out.append({**m, "content": content})
    return out


class ChatTemplate:
    """A package's chat template (or the fallback) and the special tokens it is rendered with."""

    def __init__(self, source: str | None, special_tokens: dict | None = None):
        self.is_fallback = source is None
        self.source = FALLBACK_TEMPLATE if source is None else source
        self.special_tokens = dict(special_tokens or {})
        self._template = compile_template(self.source)

    @classmethod
    def of_package(cls, pkg) -> "ChatTemplate":
        return cls(pkg.chat_template(), pkg.special_tokens)

    def render(self, messages, add_generation_prompt: bool = True, tools=None, **kwargs) -> str:
        import jinja2

        ctx = {"bos_token": "", "eos_token": "", **self.special_tokens, **kwargs}
        try:
            return self._template.render(messages=normalize_messages(messages), tools=tools,
                                         add_generation_prompt=add_generation_prompt, **ctx)
        except TemplateError:
            raise
        except jinja2.TemplateError as e:   # includes sandbox security errors
            raise TemplateError(f"the chat template failed on these messages: {e}") from None
