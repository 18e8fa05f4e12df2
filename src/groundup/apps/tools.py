"""Tools: Python callables the model can call, each with a JSON schema derived from its type hints.

``tool(fn)`` makes a :class:`Tool` of a function: its name, the first paragraph of its docstring as the
description, and a JSON Schema of its parameters (``int`` -> integer, ``float`` -> number, ``str``,
``bool``, ``list[X]``, ``dict``, ``Literal[...]`` -> enum, ``X | None``; a parameter without a default is
required). Lines ``name: text`` under an ``Args:`` heading describe the parameters. ``run_tool`` calls one
with the model's JSON arguments under a timeout, in a daemon thread, so a tool that hangs cannot hang the
caller; every failure (bad JSON, wrong arguments, an exception, a timeout) is a :class:`ToolError` whose
message goes back to the model.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import json
import re
import threading
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from groundup.apps.trace import AppError
from groundup.config import import_object

_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}


class ToolError(AppError):
    """A tool call failed; the message says which tool and why."""


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    """A JSON Schema of an object: the call's arguments."""
    fn: Callable[..., Any]

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.name):
            raise ValueError(f"tool name {self.name!r}: use 1-64 letters, digits, '_' or '-' (OpenAI's rule)")
        check_schema(self.parameters, self.name)

    def spec(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


def check_schema(schema: Any, name: str) -> None:
    """Raise ValueError naming the tool when ``schema`` is not a valid JSON Schema of an object."""
    import jsonschema

    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise ValueError(f"tool {name}: its parameters must be a JSON Schema with type 'object', not {schema!r:.80}")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ValueError(f"tool {name}: invalid JSON Schema for its parameters: {e.message}") from None


def json_schema(hint: Any) -> dict[str, Any]:
    """The JSON Schema of a type hint (what the model must write for an argument of that type)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if hint is Any or hint is inspect.Parameter.empty:
        return {}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        options = [json_schema(a) for a in args]
        return options[0] if len(options) == 1 else {"anyOf": options}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [member.value for member in hint]}
    if hint in (list, tuple, set) or origin in (list, tuple, set, frozenset, typing.Sequence):
        return {"type": "array", **({"items": json_schema(args[0])} if args and args[0] is not Ellipsis else {})}
    if hint is dict or origin is dict:
        return {"type": "object"}
    raise TypeError(f"no JSON Schema for the type {hint!r}: use int, float, str, bool, list, dict, Literal or Enum")


def _arg_docs(doc: str) -> dict[str, str]:
    """``name: text`` (or ``name (type): text``) lines under an ``Args:``/``Parameters:`` heading."""
    found: dict[str, str] = {}
    section = re.search(r"^\s*(?:Args|Arguments|Parameters):\s*$(.*?)(?:^\s*\w+:\s*$|\Z)", doc, re.M | re.S)
    for line in (section.group(1) if section else "").splitlines():
        m = re.match(r"\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)", line)
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None):
    """A :class:`Tool` of ``fn``; usable as ``@tool`` or ``@tool(name=...)``."""
    if fn is None:
        return lambda f: tool(f, name=name, description=description)
    if isinstance(fn, Tool):
        return fn
    doc = inspect.getdoc(fn) or ""
    hints = typing.get_type_hints(fn)
    arg_docs = _arg_docs(doc)
    properties, required = {}, []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        try:
            schema = json_schema(hints.get(param.name, inspect.Parameter.empty))
        except TypeError as e:
            raise TypeError(f"tool {getattr(fn, '__name__', fn)}, parameter {param.name}: {e}") from None
        if param.name in arg_docs:
            schema["description"] = arg_docs[param.name]
        properties[param.name] = schema
        if param.default is param.empty:
            required.append(param.name)
    summary = doc.split("\n\n")[0].strip() if doc else ""
    return Tool(name=name or fn.__name__, description=description if description is not None else summary,
                parameters={"type": "object", "properties": properties, "required": required}, fn=fn)


def as_tools(obj: Any) -> list[Tool]:
    """Tools from a Tool, a callable, or a list, tuple or dict (its values) of them."""
    if isinstance(obj, Tool) or (callable(obj) and not isinstance(obj, type)):
        return [tool(obj)]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, Iterable) and not isinstance(obj, (str, bytes)):
        return [t for item in obj for t in as_tools(item)]
    raise TypeError(f"not a tool: {obj!r:.80} (give a function, a Tool, or a list or dict of them)")


def load_tools(spec: str) -> list[Tool]:
    """``module:object`` (``object`` a function, Tool, list or dict of them) -> its tools."""
    return as_tools(import_object(spec, label="--tools", usage="write module:object, e.g. mypkg.tools:TOOLS"))


def parse_arguments(tool: Tool, arguments: str | dict) -> dict[str, Any]:
    """The model's arguments as a dict, checked against the tool's schema (ToolError saying what is wrong)."""
    import jsonschema

    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError as e:
            raise ToolError(f"tool {tool.name}: arguments are not valid JSON ({e.msg} at {e.pos}): "
                            f"{arguments[:200]!r}") from None
    if not isinstance(arguments, dict):
        raise ToolError(f"tool {tool.name}: arguments must be a JSON object, not {type(arguments).__name__}")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(tool.parameters).iter_errors(arguments))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "arguments"
        raise ToolError(f"tool {tool.name}: {where}: {error.message}")
    return arguments


def run_tool(tool: Tool, arguments: str | dict, *, timeout: float) -> str:
    """Call ``tool`` with the model's arguments; returns its result as text (JSON for non-strings).

    The call runs in a daemon thread: past ``timeout`` seconds the caller gets a ToolError and moves on
    (Python cannot kill a thread; the abandoned call ends when it ends, and never blocks the process's exit).
    """
    kwargs = parse_arguments(tool, arguments)
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            result = tool.fn(**kwargs)
            if inspect.isawaitable(result):
                result = asyncio.run(_awaited(result))
            outcome["result"] = result
        except BaseException as e:  # noqa: BLE001 (handed to the caller's thread)
            outcome["error"] = e

    thread = threading.Thread(target=call, name=f"tool-{tool.name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise ToolError(f"tool {tool.name}: no result within {timeout:g} s (timed out)")
    if "error" in outcome:
        e = outcome["error"]
        if isinstance(e, ToolError):
            raise e
        raise ToolError(f"tool {tool.name} raised {type(e).__name__}: {' '.join(str(e).split())}") from e
    result = outcome.get("result")
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
