"""A small MCP server written with the official SDK, for the tests: stdio, or Streamable HTTP on the port given."""

import os
import sys
import time

from mcp.server.mcpserver import MCPServer

server = MCPServer("test-tools")

@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b

@server.tool()
def fail(reason: str) -> str:
    """Always fails."""
    raise ValueError(reason)

@server.tool()
def die() -> str:
    """The server process exits mid-call."""
    os._exit(3)

@server.tool()
def hang() -> str:
    """Never answers."""
    time.sleep(60)
    return "late"

if __name__ == "__main__":
    if len(sys.argv) > 1:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
    else:
        server.run("stdio")
