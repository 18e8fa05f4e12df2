"""Tool calls out of generated text: the model's ``<tool_call>`` blocks as OpenAI's ``tool_calls``, streamed or whole.

The model writes calls in the default chat template's format (Hermes/Qwen)::

    Let me look.<tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

:class:`ToolCallParser` reads one choice's text as it streams and gives back deltas as OpenAI streams
them: content text, then for each call a first delta with its ``id``, ``type`` and ``function.name``
(``arguments`` empty) and then fragments of ``function.arguments``. A whole answer is the same parser fed
once, so a streamed and an unstreamed answer hold the same calls. The grammar (xgrammar, see
:meth:`groundup.infer.structured.GrammarFactory.tool_calls`) makes the arguments JSON that follows the
tool's schema; the raw control characters xgrammar admits inside some JSON strings (tabs and the like,
never a newline) are written here as ``\\u00XX`` escapes, so that the arguments parse with any strict
JSON reader.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

from groundup.tokenizer.chat import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_END = "}\n" + TOOL_CALL_CLOSE

def _held_back(text: str, marker: str) -> int:
    """How many characters at the end of ``text`` could be the start of ``marker`` (kept until more text comes)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0


class StringEscaper:
    """Raw control characters inside JSON strings as ``\\u00XX`` escapes, over text that arrives in pieces."""

    def __init__(self) -> None:
        self.in_string = False
        self.escaped = False  # the previous character was a backslash inside a string

    def __call__(self, text: str) -> str:
        out = []
        for ch in text:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
                elif ch < " ":
                    ch = f"\\u{ord(ch):04x}"
            elif ch == '"':
                self.in_string = True
            out.append(ch)
        return "".join(out)


@dataclass
class Delta:
    """What one piece of text adds: content, and tool-call entries as OpenAI's stream chunks carry them."""

    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)

    def add_call_entry(self, entry: dict) -> None:
        """Merge ``entry`` into this delta's entry of the same call (one entry per call in a chunk)."""
        for mine in self.tool_calls:
            if mine["index"] == entry["index"]:
                mine["function"]["arguments"] += entry["function"]["arguments"]
                return
        self.tool_calls.append(entry)

    def as_dict(self) -> dict:
        out: dict = {}
        if self.content:
            out["content"] = self.content
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        return out


class ToolCallParser:
    """One choice's text in, :class:`Delta` out; ``calls`` holds every call seen so far (whole arguments)."""

    def __init__(self) -> None:
        self.state = "text"  # "text" | "head" (after <tool_call>, before the arguments) | "arguments"
        self.buffer = ""
        self.calls: list[dict] = []
        self.content = ""
        self._space = ""  # whitespace after content, sent only if more content follows (not before a call)
        self._escape = StringEscaper()

    def feed(self, text: str) -> Delta:
        delta = Delta()
        self.buffer += text
        while self._step(delta):
            pass
        return delta

    def finish(self) -> Delta:
        """The end of the text: what was held back goes out (a call cut short keeps its partial arguments)."""
        delta = Delta()
        rest, self.buffer = self.buffer, ""
        if self.state == "arguments":
            if not _END.startswith(rest):  # else the arguments are whole and only the closing tag was cut
                self._arguments(delta, rest)
        elif self.state == "head":
            self._text(delta, TOOL_CALL_OPEN + rest)
        else:
            self._text(delta, rest)
        self._space = ""
        return delta

    def _step(self, delta: Delta) -> bool:
        """Consume what the buffer allows in the current state; True when the state changed (go again)."""
        if self.state == "text":
            if not self._until(TOOL_CALL_OPEN, lambda text: self._text(delta, text)):
                return False
            self._space = ""
            self.state = "head"
            return True
        if self.state == "head":
            head = _HEAD.match(self.buffer)
            if head is None or head.end() == len(self.buffer):  # wait: more of the head may follow
                return False
            call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                    "function": {"name": head.group(1), "arguments": ""}}
            self.calls.append(call)
            self._escape = StringEscaper()
            delta.add_call_entry({"index": len(self.calls) - 1, **call, "function": dict(call["function"])})
            self.buffer, self.state = self.buffer[head.end():], "arguments"
            return True
        if not self._until(_END, lambda text: self._arguments(delta, text)):
            return False
        self.state = "text"
        return True

    def _until(self, marker: str, take) -> bool:
        """Give ``take`` the buffer up to ``marker`` and drop the marker (True), or, with no marker yet, all of the
        buffer but an end that may be the marker's start (False)."""
        at = self.buffer.find(marker)
        if at < 0:
            keep = _held_back(self.buffer, marker)
            take(self.buffer[: len(self.buffer) - keep])
            self.buffer = self.buffer[len(self.buffer) - keep:]
            return False
        take(self.buffer[:at])
        self.buffer = self.buffer[at + len(marker):]
        return True

    def _text(self, delta: Delta, text: str) -> None:
        if not self.content:  # content never starts with whitespace
            text = text.lstrip()
        body = text.rstrip()
        if not body:
            self._space += text
            return
        piece = self._space + body
        self._space = text[len(body):]
        self.content += piece
        delta.content += piece

    def _arguments(self, delta: Delta, text: str) -> None:
        if not text:
            return
        text = self._escape(text)
        self.calls[-1]["function"]["arguments"] += text
        delta.add_call_entry({"index": len(self.calls) - 1, "function": {"arguments": text}})


def parse_tool_calls(text: str) -> tuple[str, list[dict]]:
    """A whole answer's content (None-worthy when empty) and its tool calls."""
    parser = ToolCallParser()
    parser.feed(text)
    parser.finish()
    return parser.content, parser.calls
