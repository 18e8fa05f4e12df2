"""The `groundup agent` stage: one task for an agent with Python tools and MCP servers' tools, from the
terminal. The answer goes to stdout; the trace (every model and tool call) to ``out/trace.jsonl``, and
the run's outcome to ``out/result.json``."""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from groundup import config as configlib
from groundup.apps.agent import SYSTEM, Agent
from groundup.apps.client import ChatModel
from groundup.apps.endpoint import endpoint
from groundup.apps.tools import Tool, load_tools
from groundup.apps.trace import TRACE_FILE, Trace
from groundup.artifacts import write_json, write_manifest
from groundup.extras import require_extra

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Config:
    """Run an agent on one task: a model (URL or model dir), Python tools and MCP servers' tools."""

    task: str = field(default="", metadata=configlib.positional(metavar="TASK"))
    """What to do."""
    model: str = "http://127.0.0.1:8000"
    """An OpenAI-compatible endpoint's URL, or a model dir (served by `groundup serve` for the run)."""
    model_name: str | None = None
    """The model id to send (default: the first the endpoint lists)."""
    api_key: str | None = None
    """Sent as 'Authorization: Bearer <key>'."""
    tools: list[str] | str = field(default_factory=list)
    """Python tools as module:object (a function, a Tool, or a list or dict of them); several comma-separated."""
    mcp: Path | None = None
    """An MCP servers file ({"mcpServers": {name: {command, args, env} | {url}}}) whose tools the agent may call."""
    system: str = SYSTEM
    """The system prompt."""
    max_steps: int = 8
    """Model calls at most."""
    timeout: float = 300.0
    """Seconds for the whole task."""
    request_timeout: float = 120.0
    """Seconds for one model request."""
    tool_timeout: float = 30.0
    """Seconds for one tool call."""
    retries: int = 2
    """Further tries of a model request after a 5xx answer or a dropped connection."""
    temperature: float = 0.0
    """Sampling temperature."""
    max_tokens: int = 512
    """Tokens at most per model reply."""
    out: Path = Path("runs/agent")
    """Where trace.jsonl (appended to) and result.json go."""


def run(cfg: Config) -> Path:
    """Run the task; print the answer (or why there is none: exit status 1 then)."""
    require_extra("apps", purpose="groundup agent")
    if not cfg.task.strip():
        raise ValueError("no task: groundup agent [--model URL_OR_MODEL_DIR] \"what to do\"")
    specs = cfg.tools.split(",") if isinstance(cfg.tools, str) else cfg.tools
    tools: list[Tool] = [t for spec in specs if spec.strip() for t in load_tools(spec.strip())]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        trace = stack.enter_context(Trace(out / TRACE_FILE))
        if cfg.mcp is not None:
            from groundup.apps.mcp_client import MCPTools, read_servers

            tools += stack.enter_context(MCPTools(read_servers(cfg.mcp), timeout=cfg.tool_timeout)).tools
        url = stack.enter_context(endpoint(cfg.model))
        model = stack.enter_context(ChatModel(url, model=cfg.model_name, api_key=cfg.api_key, trace=trace,
                                              timeout=cfg.request_timeout, retries=cfg.retries,
                                              temperature=cfg.temperature, max_tokens=cfg.max_tokens))
        agent = Agent(model, tools, system=cfg.system, max_steps=cfg.max_steps, timeout=cfg.timeout,
                      tool_timeout=cfg.tool_timeout)
        result = agent.run(cfg.task)
    write_json(out / "result.json", {"task": cfg.task, **asdict(result)})
    write_manifest(out, stage="agent", config=configlib.to_dict(cfg))
    if result.stopped != "answer":
        raise RuntimeError(f"the agent stopped without an answer ({result.stopped}): {result.error} "
                           f"(trace: {out / TRACE_FILE})")
    print(result.answer)
    sys.stdout.flush()
    log.info("%d steps, %d tool calls; trace in %s", result.steps, len(result.tool_calls), out / TRACE_FILE)
    return out
