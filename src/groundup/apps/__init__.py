"""Applications over any OpenAI-compatible endpoint: workflows, an agent with tools, MCP.

- :class:`ChatModel` (client.py): chat completions, timeouts and retries, a trace record per call;
- :func:`tool` and :class:`Tool` (tools.py): Python callables with JSON schemas from their type hints;
- :class:`Agent` (agent.py): model -> tools -> model, with memory, a scratchpad, step limits and timeouts;
- workflows.py: ``chain``, ``route``, ``sections``, ``vote``, ``orchestrate``, ``refine``;
- :class:`Trace` (trace.py): every model and tool call as a JSON line;
- mcp_client.py (:class:`MCPTools`) and mcp_server.py (`groundup mcp-serve`): the Model Context Protocol.

Nothing here touches a model's weights: models are reached through their HTTP endpoint.
"""

from groundup.apps.agent import Agent, AgentResult, Scratchpad
from groundup.apps.client import ChatModel, EndpointError, Reply, ToolCall
from groundup.apps.tools import Tool, ToolError, run_tool, tool
from groundup.apps.trace import AppError, Trace
from groundup.apps.workflows import (
    GateError,
    Step,
    chain,
    orchestrate,
    refine,
    route,
    sections,
    vote,
)

__all__ = ["Agent", "AgentResult", "AppError", "ChatModel", "EndpointError", "GateError", "Reply", "Scratchpad",
           "Step", "Tool", "ToolCall", "ToolError", "Trace", "chain", "orchestrate", "refine", "route", "run_tool",
           "sections", "tool", "vote"]
