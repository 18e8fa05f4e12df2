"""An agent: a loop of model -> tool calls -> results -> model, until the model answers or a limit is hit.

Memory is the conversation (kept between ``run`` calls, so a second task can refer to the first) plus a
bounded scratchpad the model writes with its ``scratchpad`` tool and reads in the system message; the
oldest notes go first when it is full. Limits: ``max_steps`` model calls per task, ``timeout`` seconds per
task (each model request and each tool call gets at most what is left), ``tool_timeout`` per tool call.
Failures end the loop cleanly with ``stopped`` saying why; a failing tool does not: its error goes back to
the model as the tool's result, and into the trace.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from groundup.apps.client import ChatModel, EndpointError, ToolCall
from groundup.apps.tools import Tool, ToolError, as_tools, run_tool
from groundup.apps.trace import one_line

SYSTEM = ("You are a helpful assistant. Use the tools when they help; when you have the answer, reply with it "
          "as plain text.")


class Scratchpad:
    """Notes the agent keeps across steps, at most ``max_chars`` characters in all (oldest dropped first)."""

    def __init__(self, max_chars: int = 2000) -> None:
        self.max_chars = max_chars
        self.notes: deque[str] = deque()

    def write(self, note: str) -> str:
        note = note.strip()[: self.max_chars]
        self.notes.append(note)
        while sum(len(n) for n in self.notes) > self.max_chars:
            self.notes.popleft()
        return f"noted ({len(self.notes)} notes kept)"

    def text(self) -> str:
        return "\n".join(f"- {n}" for n in self.notes)

    def tool(self) -> Tool:
        def scratchpad(note: str) -> str:
            """Write a note to your scratchpad; it is shown to you at every step (oldest notes drop out)."""
            return self.write(note)

        from groundup.apps.tools import tool

        return tool(scratchpad)


@dataclass
class AgentResult:
    answer: str | None
    stopped: str
    """Why the loop ended: 'answer', 'max_steps', 'timeout' or 'error'."""
    steps: int
    error: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """Every tool call: name, arguments, result or error."""


class Agent:
    def __init__(self, model: ChatModel, tools: Iterable[Any] = (), *, system: str = SYSTEM, max_steps: int = 8,
                 timeout: float = 300.0, tool_timeout: float = 30.0, scratchpad_chars: int = 2000,
                 **params: Any) -> None:
        """``tools``: functions, Tools or lists of them; ``params``: request fields for every model call."""
        self.model = model
        self.scratchpad = Scratchpad(scratchpad_chars)
        self.tools: dict[str, Tool] = {}
        for t in [*as_tools(list(tools)), self.scratchpad.tool()]:
            if t.name in self.tools:
                raise ValueError(f"two tools are named {t.name!r}")
            self.tools[t.name] = t
        self.system = system
        self.max_steps = max_steps
        self.timeout = timeout
        self.tool_timeout = tool_timeout
        self.params = params
        self.memory: list[dict[str, Any]] = []
        """The conversation so far (user, assistant and tool messages; the system message is built each step)."""

    def _system_message(self) -> dict[str, Any]:
        notes = self.scratchpad.text()
        return {"role": "system", "content": self.system + (f"\n\nYour scratchpad:\n{notes}" if notes else "")}

    def run(self, task: str) -> AgentResult:
        """Work on ``task`` until the model answers without calling a tool, or a limit ends the loop."""
        deadline = time.monotonic() + self.timeout
        self.memory.append({"role": "user", "content": task})
        specs = [t.spec() for t in self.tools.values()]
        calls: list[dict[str, Any]] = []
        for step in range(1, self.max_steps + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                return AgentResult(None, "timeout", step - 1, f"the task took over {self.timeout:g} s", calls)
            try:
                reply = self.model.chat([self._system_message(), *self.memory], tools=specs, tool_choice="auto",
                                        timeout=min(left, self.model.timeout), **self.params)
            except EndpointError as e:
                return AgentResult(None, "error", step, one_line(e), calls)
            self.memory.append(reply.message())
            if not reply.tool_calls:
                return AgentResult(reply.content or "", "answer", step, None, calls)
            for call in reply.tool_calls:
                calls.append(self._call(call, deadline))
        return AgentResult(None, "max_steps", self.max_steps, f"no answer within {self.max_steps} steps", calls)

    def _call(self, call: ToolCall, deadline: float) -> dict[str, Any]:
        """Run one tool call, append its result (or error) to the conversation; trace it."""
        record: dict[str, Any] = {"id": call.id, "name": call.name, "arguments": call.arguments}
        trace = self.model.trace
        try:
            with trace.span("tool", call.name, call_id=call.id) as fields:
                tool = self.tools.get(call.name)
                if tool is None:
                    raise ToolError(f"no tool named {call.name!r} (tools: {', '.join(self.tools)})")
                timeout = max(0.01, min(self.tool_timeout, deadline - time.monotonic()))
                content = run_tool(tool, call.arguments, timeout=timeout)
                fields["result_chars"] = len(content)
            record["result"] = content
        except ToolError as e:
            content = f"error: {one_line(e)}"
            record["error"] = one_line(e)
        self.memory.append({"role": "tool", "tool_call_id": call.id, "content": content})
        return record
