"""MCP client: the tools of Model Context Protocol servers, as :class:`~groundup.apps.tools.Tool` objects.

Built on the official ``mcp`` SDK's ``Client``, in its ``auto`` mode: it probes ``server/discover`` (the
2026-07-28 revision, no handshake) and falls back to the ``initialize`` handshake for older servers. The
SDK is asynchronous; :class:`MCPTools` runs it on an event loop in one background thread so the agent's
synchronous loop can call it, with a timeout on every call. ``servers.json`` uses the layout MCP hosts
share::

    {"mcpServers": {
        "files": {"command": "python", "args": ["-m", "my_server"], "env": {"KEY": "v"}},
        "search": {"url": "http://127.0.0.1:9000/mcp"}}}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from groundup.apps.tools import Tool, ToolError
from groundup.apps.trace import AppError, one_line
from groundup.extras import require_extra


class MCPError(AppError):
    """An MCP server could not be started, reached or listed."""


def read_servers(path: str | Path) -> dict[str, dict[str, Any]]:
    """``servers.json``'s servers by name; each has ``command`` (and ``args``, ``env``, ``cwd``) or ``url``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise MCPError(f"{path}: cannot read the MCP servers file ({e})") from None
    servers = data.get("mcpServers", data.get("servers")) if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise MCPError(f"{path}: expected an object with 'mcpServers': {{name: {{command|url: ...}}}}")
    for name, spec in servers.items():
        if not isinstance(spec, dict) or not (isinstance(spec.get("command"), str) or isinstance(spec.get("url"), str)):
            raise MCPError(f"{path}: server {name!r} needs a 'command' (stdio) or a 'url' (Streamable HTTP)")
    return servers


def _target(spec: dict[str, Any]) -> Any:
    from mcp import StdioServerParameters

    if "url" in spec:
        return spec["url"]
    return StdioServerParameters(command=spec["command"], args=[str(a) for a in spec.get("args", [])],
                                 env=spec.get("env"), cwd=spec.get("cwd"))


class MCPTools:
    """Connections to MCP servers and their tools. Use as a context manager (or call ``close``)::

        with MCPTools(read_servers("servers.json"), timeout=30) as mcp:
            agent = Agent(model, [*my_tools, *mcp.tools])
    """

    def __init__(self, servers: dict[str, dict[str, Any] | Any], *, timeout: float = 30.0,
                 connect_timeout: float = 30.0) -> None:
        """``servers``: name -> a servers.json entry, or anything the SDK's ``Client`` takes (a URL, a
        ``StdioServerParameters``, an in-process ``MCPServer``). ``timeout``: seconds per tool call."""
        require_extra("apps", "mcp", purpose="MCP servers")
        self.timeout = timeout
        self.tools: list[Tool] = []
        self._clients: dict[str, Any] = {}
        self._stop: asyncio.Event | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp-client", daemon=True)
        self._thread.start()
        self._keepers: list[Any] = []
        try:
            for name, spec in servers.items():
                self._connect(name, spec, connect_timeout)
        except BaseException:
            self.close()
            raise

    def _run(self, coro: Any, timeout: float) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g} s") from None

    def _connect(self, name: str, spec: Any, timeout: float) -> None:
        from mcp import Client

        client = Client(_target(spec) if isinstance(spec, dict) else spec, mode="auto",
                        read_timeout_seconds=self.timeout)
        holder: dict[str, Any] = {}

        async def keep() -> None:
            # The SDK's context must be entered and left in one task (anyio's cancel scopes): this task
            # holds it open until close().
            holder["ready"] = asyncio.get_running_loop().create_future()
            try:
                async with client:
                    listed = await client.list_tools()
                    holder["ready"].set_result(listed.tools)
                    await holder["stop"].wait()
            except BaseException as e:
                if not holder["ready"].done():
                    holder["ready"].set_exception(e)
                raise

        async def start() -> list[Any]:
            holder["stop"] = asyncio.Event()
            task = asyncio.get_running_loop().create_task(keep())
            self._keepers.append((task, holder))
            while "ready" not in holder:
                await asyncio.sleep(0)
            return await holder["ready"]

        try:
            listed = self._run(start(), timeout)
        except Exception as e:  # noqa: BLE001 (any failure to start is one error naming the server)
            raise MCPError(f"MCP server {name!r}: cannot connect and list its tools: {one_line(leaf(e))}") from None
        self._clients[name] = client
        taken = {t.name for t in self.tools}
        for remote in listed:
            local = remote.name if remote.name not in taken else f"{name}_{remote.name}"
            self.tools.append(Tool(name=local, description=remote.description or "",
                                   parameters=remote.input_schema or {"type": "object", "properties": {}},
                                   fn=self._caller(name, client, remote.name)))

    def _caller(self, server: str, client: Any, tool_name: str):
        def call(**arguments: Any) -> str:
            try:
                result = self._run(client.call_tool(tool_name, arguments, read_timeout_seconds=self.timeout),
                                   self.timeout + 1)
            except Exception as e:  # noqa: BLE001 (a dead server, a timeout, a protocol error: one line)
                raise ToolError(f"MCP server {server!r}, tool {tool_name}: {one_line(leaf(e))}") from None
            text = result_text(result)
            if result.is_error:
                raise ToolError(f"MCP server {server!r}, tool {tool_name} failed: {text}")
            return text

        return call

    def close(self) -> None:
        """Leave every server's session (stdio servers are stopped) and the event loop."""
        if not self._loop.is_running():
            return

        async def stop_all() -> None:
            for _, holder in self._keepers:
                if "stop" in holder:
                    holder["stop"].set()
            tasks = [task for task, _ in self._keepers]
            if tasks:
                await asyncio.wait(tasks, timeout=5)
            for task in tasks:
                task.cancel()

        # closing: a server that already died has nothing to leave
        with contextlib.suppress(Exception):
            self._run(stop_all(), 10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> MCPTools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def leaf(error: BaseException) -> BaseException:
    """The first error inside (nested) exception groups: anyio's task groups wrap what went wrong."""
    # duck-typed: Python 3.10 has no BaseExceptionGroup (anyio uses the exceptiongroup backport there)
    while isinstance(getattr(error, "exceptions", None), tuple) and error.exceptions:
        error = error.exceptions[0]
    return error


def result_text(result: Any) -> str:
    """A ``CallToolResult`` as text: its text blocks, else its structured content as JSON."""
    texts = [block.text for block in result.content if getattr(block, "type", None) == "text"]
    if texts:
        return "\n".join(texts)
    if result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return json.dumps([block.model_dump(mode="json") for block in result.content], ensure_ascii=False)
