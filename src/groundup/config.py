"""Dataclass configs <-> YAML <-> command-line flags, in one place.

Every stage exposes a keyword-only dataclass ``Config``. Its defaults are the only
defaults; its attribute docstrings become ``--help``; the same keys work in a YAML
file (``--config recipe.yaml``) and as flags (``--optim.lr 3e-4``). jsonargparse
does the mapping.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

import jsonargparse
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

C = TypeVar("C")


def normalize_flags(argv: list[str]) -> list[str]:
    """Accept ``--max-minutes`` as well as ``--max_minutes`` (dashes in keys become underscores)."""
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            arg = "--" + key.replace("-", "_") + eq + value
        out.append(arg)
    return out


def attribute_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of ``cls`` and of its base classes (the nearest definition wins)."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def add_config_arguments(parser: ArgumentParser, cls: type) -> ArgumentParser:
    """Add ``--config`` and one flag per (nested) field of the dataclass ``cls``."""
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file with any of the keys below.")
    parser.add_class_arguments(cls, nested_key=None, as_group=False)
    # jsonargparse skips, without an error, a field whose type hint it cannot resolve: refuse that here.
    dests = {action.dest.split(".", 1)[0] for action in parser._actions}
    lost = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in dests]
    if lost:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__}: fields {lost} cannot become command-line options "
                        f"(an unresolvable type hint; every name in a hint must be importable in the class's module)")
    # jsonargparse reads attribute docstrings of the class itself only: give inherited fields theirs.
    docs = attribute_docs(cls)
    for action in parser._actions:
        if action.dest in docs and isinstance(action.help, str) and "_EMPTY_HELP_" in action.help:
            action.help = action.help.replace("_EMPTY_HELP_", docs[action.dest].replace("%", "%%"))
    return parser


def build_parser(cls: type, prog: str | None = None) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip() or None, exit_on_error=True)
    return add_config_arguments(parser, cls)


def from_namespace(parser: ArgumentParser, cls: type[C], namespace: Any) -> C:
    """Turn a parsed namespace into an instance of ``cls`` (nested dataclasses included)."""
    init = parser.instantiate_classes(namespace)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(init).items() if k in names})


def parse(cls: type[C], argv: list[str] | None = None, prog: str | None = None) -> C:
    """Parse command-line flags (and ``--config`` files) into ``cls``."""
    parser = build_parser(cls, prog)
    namespace = parser.parse_args(normalize_flags(list(argv or [])))
    return from_namespace(parser, cls, namespace)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a (nested) dataclass: paths become strings, tuples lists."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    return plain(cfg)


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build ``cls`` from a plain dict (a saved ``config.yaml``), validated as flags would be."""
    parser = build_parser(cls)
    namespace = parser.parse_object(data)
    return from_namespace(parser, cls, namespace)


def load(cls: type[C], path: str | Path) -> C:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    return from_dict(cls, data)


def save(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (the file saved beside every output)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    return path


def replace(cfg: C, **changes: Any) -> C:
    return dataclasses.replace(cfg, **changes)
