"""Chat templates: turning a list of ``{role, content}`` messages into the text a model is trained on.

A template is Jinja, rendered the way Hugging Face ``transformers`` renders ``chat_template`` (a
sandboxed environment, ``trim_blocks`` and ``lstrip_blocks``, ``raise_exception`` available), so the
same file works in groundup, in an exported Hugging Face folder and in a GGUF file. A model dir keeps
its template in ``chat_template.jinja`` (the file name ``transformers`` itself reads); a model dir
without one uses :data:`DEFAULT_CHAT_TEMPLATE`, ChatML over groundup's ``<|im_start|>`` and
``<|im_end|>`` special tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

CHAT_TEMPLATE_FILE = "chat_template.jinja"
ROLES = ("system", "user", "assistant")

# ChatML: every message is "<|im_start|>{role}\n{content}<|im_end|>\n"; the generation prompt opens an
# assistant turn. The model ends its answer with <|im_end|>, which generation treats as a stop token.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
END_OF_TURN = "<|im_end|>"


class ChatFormatError(ValueError):
    """A conversation that is not a list of ``{role, content}`` messages with known roles."""


def validate_messages(messages: Any, where: str = "messages") -> list[dict[str, str]]:
    """Check the shape of a conversation; return it as plain dicts. Errors name ``where`` and the message index."""
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        raise ChatFormatError(f"{where}: expected a list of messages, got {type(messages).__name__}")
    if not messages:
        raise ChatFormatError(f"{where}: the conversation is empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ChatFormatError(f"{where}[{i}]: expected an object with 'role' and 'content', got {type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise ChatFormatError(f"{where}[{i}]: missing key {key!r}")
        if m["role"] not in ROLES:
            raise ChatFormatError(f"{where}[{i}]: unknown role {m['role']!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(m["content"], str):
            raise ChatFormatError(f"{where}[{i}]: 'content' must be a string, got {type(m['content']).__name__}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


@lru_cache(maxsize=16)
def _compile(template: str):
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render_chat(messages: Sequence[dict[str, str]], template: str | None = None, *,
                add_generation_prompt: bool = False, **extra: Any) -> str:
    """Render ``messages`` with ``template`` (default: ChatML). ``extra`` reaches the template as variables."""
    messages = validate_messages(messages)
    return _compile(template or DEFAULT_CHAT_TEMPLATE).render(
        messages=messages, add_generation_prompt=add_generation_prompt, **extra)


def read_chat_template(model_dir: str | Path) -> str:
    """The template of a model dir: its ``chat_template.jinja``, else the default ChatML template."""
    path = Path(model_dir) / CHAT_TEMPLATE_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8")
    return DEFAULT_CHAT_TEMPLATE


def write_chat_template(model_dir: str | Path, template: str | None = None) -> Path:
    """Store ``template`` (default: ChatML) as the model dir's ``chat_template.jinja``."""
    _compile(template or DEFAULT_CHAT_TEMPLATE)  # a template that does not parse fails here, not at serving
    path = Path(model_dir) / CHAT_TEMPLATE_FILE
    path.write_text(template or DEFAULT_CHAT_TEMPLATE, encoding="utf-8")
    return path
