"""The `groundup mcp-serve` stage: groundup's own capabilities as MCP tools, for any MCP host.

Tools: ``plan`` (size, compute, memory, time and cost of training a model), ``count_tokens`` (with a
model dir's or tokenizer's tokenizer), ``generate`` (a reply from the model, through its endpoint) and
``evaluate`` (a model dir on local task files). Served with the official ``mcp`` SDK over stdio (the
default: a host starts ``groundup mcp-serve`` itself) or Streamable HTTP; the SDK answers both the
``initialize`` handshake and the handshake-free 2026-07-28 revision.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from groundup.apps.client import ChatModel
from groundup.apps.endpoint import endpoint, is_url
from groundup.apps.trace import AppError, one_line
from groundup.extras import require_extra

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Config:
    """Serve groundup's capabilities (plan, evaluate, generate, count tokens) as MCP tools."""

    model: str | None = None
    """The model `generate` answers with and the default of `count_tokens` and `evaluate`: a model dir
    (served by `groundup serve` for as long as this runs) or an OpenAI-compatible endpoint's URL."""
    transport: Literal["stdio", "streamable-http"] = "stdio"
    """'stdio' (the host starts this command) or 'streamable-http' (a long-running server at host:port/mcp)."""
    host: str = "127.0.0.1"
    """Address to bind for streamable-http."""
    port: int = 8765
    """TCP port for streamable-http."""
    request_timeout: float = 120.0
    """Seconds for one model request of `generate`."""


def plan(model: str = "gpt2-124m", tokens: float | None = None, gpu: str = "h100-sxm", gpus: int = 1) -> dict:
    """Plan training a model: parameters, training FLOPs, device hours, wall-clock time, cost and memory.

    Args:
        model: a preset (gpt2-124m, llama-3-8b, tiny-gpt2, ...) or a model dir
        tokens: training tokens (default: Chinchilla-optimal, 20 per parameter)
        gpu: accelerator from groundup's hardware table (a100, h100-sxm, h200, l4, cpu, ...)
        gpus: devices training together
    """
    from groundup.plan import run as plan_run

    cfg = plan_run.Config(model=model, tokens=tokens, gpu=gpu, gpus=gpus)
    full = plan_run.build_plan(cfg, plan_run.resolve_model(cfg), plan_run.accelerator_for(cfg))
    time_cost, memory = full["time_cost"], full["memory"]
    return {"parameters": full["parameters"], "tokens": full["compute"]["tokens"],
            "training_flops": full["compute"]["training_flops"], "gpu_hours": time_cost["gpu_hours"],
            "wall_clock_hours": time_cost["wall_clock_hours"], "cost": time_cost["cost"],
            "memory": {k: v for k, v in memory.items() if not isinstance(v, (list, dict))}}


class Capabilities:
    """The tools, bound to the configured model (``url``: its endpoint; ``model_dir``: its dir, if any)."""

    def __init__(self, url: str | None, model_dir: Path | None, request_timeout: float) -> None:
        self.model_dir = model_dir
        self.chat = ChatModel(url, timeout=request_timeout, retries=1) if url else None

    def count_tokens(self, text: str, tokenizer: str | None = None) -> int:
        """Count the tokens of a text.

        Args:
            text: the text
            tokenizer: a tokenizer.json, or a model or tokenizer dir holding one (default: the served model's)
        """
        from groundup.tokenizer import Tokenizer

        where = Path(tokenizer) if tokenizer else self.model_dir
        if where is None:
            raise ValueError("no tokenizer given and mcp-serve was started without a model dir")
        path = where / "tokenizer.json" if where.is_dir() else where
        if not path.is_file():
            raise ValueError(f"{path}: no tokenizer.json there")
        return len(Tokenizer.from_file(path).encode(text))

    def generate(self, prompt: str, max_tokens: int = 128, temperature: float = 0.0) -> str:
        """The model's reply to a prompt.

        Args:
            prompt: the user's message
            max_tokens: tokens at most in the reply
            temperature: sampling temperature (0: greedy)
        """
        if self.chat is None:
            raise ValueError("mcp-serve was started without --model: no model to generate with")
        return self.chat.complete(prompt, max_tokens=max_tokens, temperature=temperature)

    def evaluate(self, tasks: str, model: str | None = None) -> dict:
        """Evaluate a model dir on local task files (JSONL, MMLU CSV, .txt); returns the scores.

        Args:
            tasks: task files or folders, comma-separated (name=path names one)
            model: the model dir (default: the served model's)
        """
        from groundup.artifacts import read_json
        from groundup.evaluate import run as evaluate_run

        model_dir = Path(model) if model else self.model_dir
        if model_dir is None:
            raise ValueError("no model dir given and mcp-serve was started without one")
        with tempfile.TemporaryDirectory(prefix="groundup-mcp-eval-") as out:
            cfg = evaluate_run.Config(model=model_dir, tasks=tasks, out=Path(out) / "eval", progress=False)
            evaluate_run.run(cfg)
            return read_json(Path(out) / "eval" / "results.json")["results"]


def reported(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its errors raised as the SDK's ToolError, whose message reaches the client (the SDK
    keeps any other exception's text on the server)."""
    from mcp.server.mcpserver.exceptions import ToolError

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValueError, OSError, KeyError, AppError) as e:
            raise ToolError(one_line(e) if isinstance(e, AppError) else " ".join(str(e).split())) from e

    return call


def build_server(capabilities: Capabilities) -> Any:
    """The SDK's ``MCPServer`` with groundup's tools."""
    from mcp.server.mcpserver import MCPServer

    from groundup import __version__

    server = MCPServer("groundup", version=__version__,
                       instructions="groundup's tools: plan a model's training, count tokens, generate, evaluate.")
    for fn in (plan, capabilities.count_tokens, capabilities.generate, capabilities.evaluate):
        server.add_tool(reported(fn))
    return server


def run(cfg: Config) -> Path:
    """Serve until the host closes stdin (stdio) or until interrupted (streamable-http)."""
    require_extra("apps", "mcp", purpose="groundup mcp-serve")
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(endpoint(cfg.model)) if cfg.model else None
        model_dir = Path(cfg.model) if cfg.model and not is_url(cfg.model) else None
        server = build_server(Capabilities(url, model_dir, cfg.request_timeout))
        if cfg.transport == "stdio":
            server.run("stdio")
        else:
            log.info("MCP tools at http://%s:%d/mcp", cfg.host, cfg.port)
            server.run("streamable-http", host=cfg.host, port=cfg.port)
    return Path(cfg.model or ".")
