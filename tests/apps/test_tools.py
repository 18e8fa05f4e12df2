import enum
import time
from typing import Literal

import pytest

from groundup.apps.tools import Tool, ToolError, as_tools, load_tools, parse_arguments, run_tool, tool


class Unit(enum.Enum):
    celsius = "C"
    fahrenheit = "F"


def weather(city: str, days: int, unit: Unit = Unit.celsius, detail: Literal["short", "long"] = "short",
            tags: list[str] | None = None, scale: float = 1.0, hourly: bool = False) -> dict:
    """The weather forecast for a city.

    Longer text that is not part of the description.

    Args:
        city: the city's name
        days (int): how many days ahead
    """
    return {"city": city, "days": days}


def test_schema_comes_from_type_hints_and_docstring():
    t = tool(weather)
    assert t.name == "weather"
    assert t.description == "The weather forecast for a city."
    params = t.parameters
    assert params["required"] == ["city", "days"]
    props = params["properties"]
    assert props["city"] == {"type": "string", "description": "the city's name"}
    assert props["days"] == {"type": "integer", "description": "how many days ahead"}
    assert props["unit"] == {"enum": ["C", "F"]}
    assert props["detail"] == {"enum": ["short", "long"]}
    assert props["tags"] == {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]}
    assert props["scale"] == {"type": "number"} and props["hourly"] == {"type": "boolean"}
    assert t.spec()["function"]["parameters"] is params and t.spec()["type"] == "function"


def test_a_type_without_a_schema_is_named():
    def f(x: object) -> None: ...

    with pytest.raises(TypeError, match="parameter x"):
        tool(f)


def test_an_invalid_schema_is_refused_naming_the_tool():
    with pytest.raises(ValueError, match="tool broken: invalid JSON Schema"):
        Tool(name="broken", description="", parameters={"type": "object", "properties": {"a": {"type": "nope"}}},
             fn=lambda a: a)
    with pytest.raises(ValueError, match="type 'object'"):
        Tool(name="broken", description="", parameters={"type": "string"}, fn=lambda: 0)
    with pytest.raises(ValueError, match="tool name"):
        Tool(name="has space", description="", parameters={"type": "object"}, fn=lambda: 0)


def test_arguments_are_checked_against_the_schema():
    t = tool(weather)
    assert parse_arguments(t, '{"city": "Oslo", "days": 2}') == {"city": "Oslo", "days": 2}
    with pytest.raises(ToolError, match="not valid JSON"):
        parse_arguments(t, '{"city": "Oslo", ')
    with pytest.raises(ToolError, match="'days' is a required property"):
        parse_arguments(t, '{"city": "Oslo"}')
    with pytest.raises(ToolError, match="days: 'two' is not of type 'integer'"):
        parse_arguments(t, '{"city": "Oslo", "days": "two"}')
    with pytest.raises(ToolError, match="JSON object"):
        parse_arguments(t, "[1]")


def test_run_tool_returns_text_and_turns_failures_into_tool_errors():
    def add(a: int, b: int) -> int:
        return a + b

    def boom() -> str:
        raise ValueError("no such thing")

    async def later(x: str) -> str:
        return x.upper()

    assert run_tool(tool(add), '{"a": 2, "b": 3}', timeout=5) == "5"
    assert run_tool(tool(later), {"x": "hi"}, timeout=5) == "HI"
    with pytest.raises(ToolError, match="tool boom raised ValueError: no such thing"):
        run_tool(tool(boom), "{}", timeout=5)


def test_a_hanging_tool_times_out_without_hanging_the_caller():
    def hang() -> str:
        time.sleep(30)
        return "never"

    start = time.monotonic()
    with pytest.raises(ToolError, match=r"tool hang: no result within 0.3 s \(timed out\)"):
        run_tool(tool(hang), "{}", timeout=0.3)
    assert time.monotonic() - start < 2


def test_as_tools_and_load_tools(tmp_path, monkeypatch):
    (tmp_path / "tools_for_test_tools.py").write_text("def a(x: int) -> int:\n    return x\n\n"
                                          "def b(y: str) -> str:\n    return y\n\nTOOLS = [a, b]\nBY_NAME = {'a': a}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [t.name for t in load_tools("tools_for_test_tools:TOOLS")] == ["a", "b"]
    assert [t.name for t in load_tools("tools_for_test_tools:BY_NAME")] == ["a"]
    assert [t.name for t in as_tools(tool(weather))] == ["weather"]
    with pytest.raises(ValueError, match="module:object"):
        load_tools("tools_for_test_tools")
    with pytest.raises(ValueError, match="has no attribute NOPE"):
        load_tools("tools_for_test_tools:NOPE")
    with pytest.raises(ValueError, match="cannot import"):
        load_tools("no_such_module_here:X")
    with pytest.raises(TypeError, match="not a tool"):
        as_tools(3)
