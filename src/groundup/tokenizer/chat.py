"""Chat templates: turning a list of ``{role, content}`` messages into the text a model is trained on.

A template is Jinja, rendered the way Hugging Face ``transformers`` renders ``chat_template`` (a
sandboxed environment, ``trim_blocks`` and ``lstrip_blocks``, ``raise_exception`` available), so the
same file works in groundup, in an exported Hugging Face folder and in a GGUF file. A model dir keeps
its template in ``chat_template.jinja`` (the file name ``transformers`` itself reads); a model dir
without one uses :data:`DEFAULT_CHAT_TEMPLATE`, ChatML over groundup's ``<|im_start|>`` and
``<|im_end|>`` special tokens.

Tool use follows OpenAI's message shapes: ``render_chat(messages, tools=[...])`` lists the tools (OpenAI's
``{"type": "function", "function": {...}}`` objects) in the system turn, an assistant message may carry
``tool_calls`` (each written as a Hermes/Qwen ``<tool_call>`` block) and a ``tool`` message carries a
tool's result for the ``tool_call_id`` of an earlier call. Without tools the default template renders
exactly plain ChatML.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

CHAT_TEMPLATE_FILE = "chat_template.jinja"
ROLES = ("system", "user", "assistant", "tool")
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

# ChatML: every message is "<|im_start|>{role}\n{content}<|im_end|>\n"; the generation prompt opens an
# assistant turn. The model ends its answer with <|im_end|>, which generation treats as a stop token.
# With tools (Hermes/Qwen style): the system turn lists them in <tools>, each call of an assistant turn is
# '<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>' (calls one per line, after the content),
# and each tool result is a turn of its own, '<|im_start|>tool\n<tool_response>\n...\n</tool_response>',
# so that a conversation renders prefix by prefix (fine-tuning's loss masks need that).
_TOOLS_SYSTEM = (
    "{% if tools %}"
    "{{ '<|im_start|>system\\n' }}"
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    "{{ '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'"
    " + 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{% for tool in tools %}{{ '\\n' + (tool | tojson) }}{% endfor %}"
    "{{ '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '"
    " + 'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n'"
    " + '{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{% endif %}"
)
_TOOL_CALLS = (
    "{% for call in message['tool_calls'] %}"
    "{% set function = call['function'] if call['function'] is defined else call %}"
    "{% if message['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<tool_call>\\n{\"name\": \"' + function['name'] + '\", \"arguments\": ' }}"
    "{% if function['arguments'] is string %}{{ function['arguments'] }}"
    "{% else %}{{ function['arguments'] | tojson }}{% endif %}"
    "{{ '}\\n</tool_call>' }}"
    "{% endfor %}"
)
DEFAULT_CHAT_TEMPLATE = (
    _TOOLS_SYSTEM
    + "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<|im_start|>tool\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{% elif message['role'] == 'assistant' and message['tool_calls'] %}"
    "{{ '<|im_start|>assistant\\n' + (message['content'] or '') }}" + _TOOL_CALLS + "{{ '<|im_end|>\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
END_OF_TURN = "<|im_end|>"


class ChatFormatError(ValueError):
    """A conversation that is not a list of ``{role, content}`` messages with known roles."""


def validate_messages(messages: Any, where: str = "messages") -> list[dict[str, Any]]:
    """Check the shape of a conversation; return it as plain dicts. Errors name ``where`` and the message index.

    Each message comes back as ``{role, content}``; an assistant message's ``tool_calls`` (normalized to
    OpenAI's ``{id, type, function: {name, arguments}}``, content then may be null) and a tool message's
    ``tool_call_id`` (which must answer a call made earlier in the conversation) are kept."""
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        raise ChatFormatError(f"{where}: expected a list of messages, got {type(messages).__name__}")
    if not messages:
        raise ChatFormatError(f"{where}: the conversation is empty")
    out = []
    call_ids: set[str] = set()
    for i, m in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(m, dict):
            raise ChatFormatError(f"{at}: expected an object with 'role' and 'content', got {type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise ChatFormatError(f"{at}: missing key {key!r}")
        if m["role"] not in ROLES:
            raise ChatFormatError(f"{at}: unknown role {m['role']!r} (expected one of {', '.join(ROLES)})")
        message: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if m["role"] == "assistant" and m.get("tool_calls"):
            message["tool_calls"] = _tool_calls(m["tool_calls"], f"{at}.tool_calls")
            call_ids.update(call["id"] for call in message["tool_calls"])
            message["content"] = m["content"] or ""
        if m["role"] == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in call_ids:
                raise ChatFormatError(f"{at}.tool_call_id: {call_id!r} answers no tool call made earlier in the "
                                      "conversation")
            message["tool_call_id"] = call_id
        if not isinstance(message["content"], str):
            raise ChatFormatError(f"{at}: 'content' must be a string, got {type(m['content']).__name__}")
        out.append(message)
    return out


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's tool calls as OpenAI's objects; ``arguments`` a JSON object's text (a dict is
    written as JSON)."""
    if not isinstance(calls, Sequence) or isinstance(calls, str | bytes):
        raise ChatFormatError(f"{where}: expected a list of tool calls, got {type(calls).__name__}")
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ChatFormatError(f"{where}[{j}]: expected {{'id', 'type': 'function', 'function': {{'name', "
                                  "'arguments'}}}")
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        try:
            if not isinstance(json.loads(arguments), dict):
                raise ValueError("not an object")
        except ValueError:
            raise ChatFormatError(f"{where}[{j}].function.arguments: not a JSON object: {arguments[:60]!r}") from None
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise ChatFormatError(f"{where}[{j}].id: a tool call needs a string id")
        out.append({"id": call_id, "type": "function", "function": {"name": function["name"], "arguments": arguments}})
    return out


@lru_cache(maxsize=16)
def _compile(template: str):
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
               sort_keys: bool = False) -> str:
        # transformers replaces Jinja's tojson (HTML-escaped, sorted keys) by plain json.dumps; the same
        # here, so a template renders the same text in groundup and in transformers.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = tojson
    return env.from_string(template)


def render_chat(messages: Sequence[dict[str, Any]], template: str | None = None, *,
                add_generation_prompt: bool = False, tools: list[dict] | None = None, **extra: Any) -> str:
    """Render ``messages`` with ``template`` (default: ChatML) and ``tools`` (OpenAI's tool objects, or None).
    ``extra`` reaches the template as variables."""
    messages = validate_messages(messages)
    return _compile(template or DEFAULT_CHAT_TEMPLATE).render(
        messages=messages, add_generation_prompt=add_generation_prompt, tools=tools or None, **extra)


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


def end_of_turn_ids(tokenizer, template: str, *, eos: bool = False) -> list[int]:
    """Tokens that end an assistant turn: the special tokens ``template`` writes whose names end in ``end|>``
    (ChatML's ``<|im_end|>``), and the tokenizer's EOS with ``eos``. Generation from a chat prompt stops at
    them (evaluation, GRPO's rollouts)."""
    specials = getattr(tokenizer, "special_tokens", {}) or {}
    ids = {i for name, i in specials.items() if name in template and name.endswith("end|>")}
    if eos and tokenizer.eos_id is not None:
        ids.add(tokenizer.eos_id)
    return sorted(ids)
