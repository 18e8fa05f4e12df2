"""An MCP server that only speaks the handshake era: ``initialize`` first, no ``server/discover``.

Hand-rolled JSON-RPC over stdio (one message per line), as older servers are, so the client's fallback
to the handshake is tested against a server that really refuses the newer revision."""

import json
import sys

TOOLS = [{"name": "echo", "description": "Echo a text back.",
          "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}]


def answer(message: dict, initialized: bool) -> dict | None:
    method, id = message.get("method"), message.get("id")
    if id is None:  # a notification
        return None
    if method == "initialize":
        return {"jsonrpc": "2.0", "id": id, "result": {
            "protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
            "serverInfo": {"name": "legacy-echo", "version": "0.1"}}}
    if not initialized:
        return {"jsonrpc": "2.0", "id": id, "error": {"code": -32600, "message": "not initialized"}}
    if method == "tools/list":
        return {"jsonrpc": "2.0", "id": id, "result": {"tools": TOOLS}}
    if method == "tools/call":
        text = message["params"]["arguments"]["text"]
        return {"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "echo: " + text}]}}
    return {"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": f"Method not found: {method}"}}


def main() -> None:
    initialized = False
    seen = []
    for line in sys.stdin:
        message = json.loads(line)
        seen.append(message.get("method"))
        reply = answer(message, initialized)
        initialized = initialized or message.get("method") == "initialize"
        if reply is not None:
            if message.get("method") == "tools/call":  # tell the test what the client sent, in order
                reply["result"]["content"].append({"type": "text", "text": "methods: " + ",".join(map(str, seen))})
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
