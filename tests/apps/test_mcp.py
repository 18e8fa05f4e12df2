import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import call, tool_results

import groundup
from groundup.apps import Agent, ChatModel, ToolError, Trace, run_tool
from groundup.apps.endpoint import free_port
from groundup.apps.mcp_client import MCPError, MCPTools, read_servers

HERE = Path(__file__).parent
# The SDK starts stdio servers with a minimal environment: this checkout's groundup must come first there too.
SOURCES = {"PYTHONPATH": str(Path(groundup.__file__).parents[1])}
SDK_SERVER = {"command": sys.executable, "args": [str(HERE / "mcp_test_server.py")]}


def by_name(mcp: MCPTools) -> dict:
    return {t.name: t for t in mcp.tools}


def test_client_against_an_sdk_server_over_stdio_and_its_faults():
    with MCPTools({"t": SDK_SERVER}, timeout=2) as mcp:
        tools = by_name(mcp)
        assert set(tools) == {"add", "fail", "die", "hang"}
        assert tools["add"].parameters["required"] == ["a", "b"]
        assert tools["add"].description == "Add two integers."
        assert run_tool(tools["add"], '{"a": 2, "b": 3}', timeout=5) == "5"
        with pytest.raises(ToolError, match="MCP server 't', tool fail failed"):
            run_tool(tools["fail"], {"reason": "x"}, timeout=5)
        start = time.monotonic()
        with pytest.raises(ToolError, match="MCP server 't', tool hang: .*timed out"):
            run_tool(tools["hang"], {}, timeout=10)
        assert time.monotonic() - start < 5
        start = time.monotonic()
        with pytest.raises(ToolError, match="MCP server 't', tool die: .*Connection closed"):
            run_tool(tools["die"], {}, timeout=10)
        with pytest.raises(ToolError, match="Connection closed"):  # later calls fail at once, too
            run_tool(tools["add"], {"a": 1, "b": 1}, timeout=10)
        assert time.monotonic() - start < 5


def test_client_falls_back_to_the_handshake_for_an_older_server():
    legacy = {"command": sys.executable, "args": [str(HERE / "mcp_legacy_server.py")]}
    with MCPTools({"old": legacy, "new": SDK_SERVER}, timeout=5) as mcp:
        tools = by_name(mcp)
        assert {"echo", "add"} <= set(tools)
        reply = run_tool(tools["echo"], {"text": "hi"}, timeout=10)
    lines = reply.splitlines()
    assert lines[0] == "echo: hi"
    # the probe was refused, then the handshake: initialize, initialized, then the listing and the call
    assert lines[1] == "methods: server/discover,initialize,notifications/initialized,tools/list,tools/call"


def test_client_over_streamable_http():
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "mcp_test_server.py"), str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                mcp = MCPTools({"web": {"url": f"http://127.0.0.1:{port}/mcp"}}, timeout=5, connect_timeout=5)
                break
            except MCPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        with mcp:
            assert run_tool(by_name(mcp)["add"], {"a": 40, "b": 2}, timeout=10) == "42"
    finally:
        server.terminate()
        server.wait(10)


def test_a_server_that_cannot_start_is_named():
    start = time.monotonic()
    with pytest.raises(MCPError, match="MCP server 'broken': cannot connect"):
        MCPTools({"broken": {"command": sys.executable, "args": ["-c", "import sys; sys.exit(2)"]}},
                 connect_timeout=10)
    assert time.monotonic() - start < 12


def test_read_servers(tmp_path):
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"mcpServers": {"a": {"command": "x"}, "b": {"url": "http://h/mcp"}}}))
    assert set(read_servers(path)) == {"a", "b"}
    path.write_text(json.dumps({"mcpServers": {"a": {"args": []}}}))
    with pytest.raises(MCPError, match="server 'a' needs a 'command'"):
        read_servers(path)
    path.write_text("{")
    with pytest.raises(MCPError, match="servers.json: cannot read"):
        read_servers(path)


def test_mcp_serve_against_the_client_and_an_agent_using_it(fake_openai, spine_tokenizer, tmp_path):
    """`groundup mcp-serve` (stdio, its generate tool on a scripted endpoint) driven by the MCP client,
    and an agent whose model calls its tools: a server dying mid-call is an error in the trace."""
    from groundup.tokenizer import Tokenizer

    endpoint = fake_openai(lambda body: "generated: " + body["messages"][-1]["content"])
    serve = {"command": sys.executable, "args": ["-m", "groundup", "mcp-serve", "--model", endpoint.url],
             "env": SOURCES}
    tokenizer = Path(spine_tokenizer)
    with MCPTools({"groundup": serve}, timeout=60) as mcp:
        tools = by_name(mcp)
        assert set(tools) == {"plan", "count_tokens", "generate", "evaluate"}
        planned = json.loads(run_tool(tools["plan"], {"model": "gpt2-124m", "tokens": 1e9, "gpu": "h100-sxm"},
                                      timeout=60))
        assert planned["parameters"]["total"] == 124_439_808 and planned["tokens"] == 1e9
        text = "counting the tokens of this sentence"
        assert int(run_tool(tools["count_tokens"], {"text": text, "tokenizer": str(tokenizer)}, timeout=60)) == \
            len(Tokenizer.from_file(tokenizer / "tokenizer.json" if tokenizer.is_dir() else tokenizer).encode(text))
        assert run_tool(tools["generate"], {"prompt": "hello", "max_tokens": 5}, timeout=60) == "generated: hello"
        with pytest.raises(ToolError, match="no model dir given"):
            run_tool(tools["evaluate"], {"tasks": "x.jsonl"}, timeout=60)

    model = fake_openai(lambda body: {"tool_calls": [call("die", {})]} if not tool_results(body)
                        else "gave up: " + tool_results(body)[0]["content"])
    with MCPTools({"t": SDK_SERVER}, timeout=5) as mcp, Trace(tmp_path / "trace.jsonl") as trace, \
            ChatModel(model.url, trace=trace) as chat:
        result = Agent(chat, mcp.tools, tool_timeout=10).run("die please")
    assert result.stopped == "answer" and "MCP server 't', tool die" in result.answer
    records = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["ok"]) for r in records] == [("model", True), ("tool", False), ("model", True)]
    assert "Connection closed" in records[1]["error"]
