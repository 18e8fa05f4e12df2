"""Dataclass configs <-> YAML <-> command-line flags, in one place.

Every stage exposes a keyword-only dataclass ``Config``. Its defaults are the only
defaults; its attribute docstrings become ``--help``; the same keys work in a YAML
file (``--config recipe.yaml``) and as flags (``--optim.lr 3e-4``). jsonargparse
does the mapping.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn, TypeVar

import jsonargparse
import yaml
from jsonargparse import ActionConfigFile, ActionSubCommands, ArgumentParser

jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

C = TypeVar("C")


def normalize_flags(argv: list[str]) -> list[str]:
    """Accept ``--max-minutes`` as well as ``--max_minutes``: dashes in an option's key become underscores.

    A spelling rule applied by :class:`Parser` to every command line (values are left alone, and so is
    everything after ``--``), not a parser: jsonargparse decides what each token is."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        if arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            arg = "--" + key.replace("-", "_") + eq + value
        out.append(arg)
    return out


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(str(text).split())


class Parser(ArgumentParser):
    """jsonargparse's parser with groundup's conventions.

    A stage's option keys take dashes or underscores (:func:`normalize_flags`); a usage error is one
    line naming the option at fault and pointing at ``--help``, instead of the whole usage; a Config
    whose only field is a :func:`remainder` field takes the command line as it is (another program
    parses it)."""

    passthrough: str | None = None
    """The remainder field's name, when this parser hands its command line on unparsed."""
    config_positional: tuple[str, str] | None = None
    """(name, default) of a positional that names a config file (:func:`positional` with ``loads``)."""

    def parse_args(self, args=None, namespace=None, **kwargs):  # type: ignore[override]
        args = list(sys.argv[1:] if args is None else args)
        if self.passthrough is not None:
            return jsonargparse.Namespace(**{self.passthrough: args})
        if self._subcommands_action is None:  # a stage's own flags (a sub-command's reach its own parser)
            args = normalize_flags(args)
        if self.config_positional is not None:
            # Left out, argparse would apply the positional after the flags (and its file would override
            # them): a first reading finds out (printing nothing for --print_config), and the line is read
            # again with the default in front.
            from jsonargparse._actions import _ActionPrintConfig  # jsonargparse's own switch for this

            with _ActionPrintConfig.skip_print_config():
                first = super().parse_args(args, namespace, **kwargs)
            if first.get(self.config_positional[0]) is None:
                args = [self.config_positional[1], *args]
        return super().parse_args(args, namespace, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {one_line(message)} (see `{prog} --help`)\n")
        self.exit(2)


# ---------------------------------------------------------------------------- fields that are not --flags

_POSITIONAL, _ALIASES, _REMAINDER = "groundup.positional", "groundup.aliases", "groundup.remainder"


def import_object(spec: str, *, label: str, usage: str) -> Any:
    """The object a ``module:attribute`` spec names (``attribute`` may be dotted), imported; a ValueError
    starting with ``label`` and the spec when it is malformed (``usage`` says what to write), the module
    cannot be imported or the attribute is missing."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{label} {spec!r}: {usage}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{label} {spec!r}: cannot import {module_name}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{label} {spec!r}: {module_name} has no attribute {attr}")
        obj = getattr(obj, part)
    return obj


def positional(*, nargs: str = "?", metavar: str | None = None,
               loads: Callable[[str], Path] | None = None) -> dict[str, Any]:
    """Field metadata: the field is a positional argument (``nargs`` as in argparse: ``?``, ``*``, ``+``).

    ``loads`` turns the value into a YAML file applied like ``--config`` where the argument stands (so
    flags after it override it; absent, its default is applied first): ``groundup run [RECIPE]``."""
    return {_POSITIONAL: {"nargs": nargs, "metavar": metavar, "loads": loads}}


def aliases(*flags: str) -> dict[str, Any]:
    """Field metadata: more option names for the field's flag (``--to`` for ``--format``)."""
    return {_ALIASES: flags}


def remainder() -> dict[str, Any]:
    """Field metadata: the rest of the command line, unparsed (for a stage that runs another program's
    command line, ``groundup lm-eval``)."""
    return {_REMAINDER: True}


def apply_config_file(parser: ArgumentParser, namespace: Any, path: str) -> None:
    """Apply the YAML file ``path`` to ``namespace`` as ``--config`` does; malformed YAML is an error naming
    the file and line (jsonargparse's own message names neither the file nor, for a key, the YAML)."""
    try:
        with open(path, encoding="utf-8") as f:
            yaml.safe_load(f)
    except OSError:
        pass  # a missing file, or a YAML string given in place of a file: jsonargparse says which
    except yaml.YAMLError as e:  # a TypeError here becomes jsonargparse's one-line usage error
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise TypeError(f"{where}: not valid YAML ({one_line(getattr(e, 'problem', None) or e)})") from e
    ActionConfigFile.apply_config(parser, namespace, "config", path)


class _ConfigFile(ActionConfigFile):
    """``--config FILE``: jsonargparse's, with the file named in its errors."""

    def __call__(self, parser, cfg, values, option_string=None) -> None:
        apply_config_file(parser, cfg, values)


class _LoadsConfig(argparse.Action):
    """A positional naming a config file: applies it like ``--config`` and keeps the name as given."""

    def __init__(self, *, loads: Callable[[str], Path], **kwargs) -> None:
        self.loads = loads
        super().__init__(**kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if values is not None:  # None: left out (Parser.parse_args then reads the line again with the default)
            apply_config_file(parser, namespace, str(self.loads(values)))
        namespace[self.dest] = values


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


def _add_positional(parser: ArgumentParser, f: dataclasses.Field, hint: Any, doc: str) -> None:
    spec = f.metadata[_POSITIONAL]
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    kwargs: dict[str, Any] = {"nargs": spec["nargs"], "metavar": spec["metavar"] or f.name.upper(),
                              "help": doc.replace("%", "%%"), "default": default}
    if spec["loads"] is not None:
        if not isinstance(parser, Parser) or spec["nargs"] != "?":
            raise TypeError(f"{f.name}: a positional config file takes nargs='?' and a groundup Parser")
        parser.config_positional = (f.name, default)
        parser.add_argument(f.name, action=_LoadsConfig, loads=spec["loads"], **{**kwargs, "default": None})
        return
    if spec["nargs"] in ("*", "+"):  # the list's element type
        hint = typing.get_args(hint)[0] if typing.get_args(hint) else str
    parser.add_argument(f.name, type=hint, **kwargs)


def add_config_arguments(parser: ArgumentParser, cls: type) -> ArgumentParser:
    """Add ``--config`` and one flag per (nested) field of the dataclass ``cls`` (or a positional, for a
    field whose metadata says so: :func:`positional`, :func:`remainder`)."""
    fields = [f for f in dataclasses.fields(cls) if f.init]
    docs = attribute_docs(cls)
    remainder_fields = [f.name for f in fields if f.metadata.get(_REMAINDER)]
    if remainder_fields:
        if len(fields) != 1 or not isinstance(parser, Parser):
            raise TypeError(f"{cls.__qualname__}: a remainder field must be the only field of a Config")
        parser.passthrough = remainder_fields[0]
        parser.add_argument(fields[0].name, nargs="*", help=docs.get(fields[0].name, "").replace("%", "%%"))
        return parser
    parser.add_argument("--config", action=_ConfigFile, help="A YAML file with any of the keys below.")
    positionals = [f for f in fields if f.metadata.get(_POSITIONAL)]
    parser.add_class_arguments(cls, nested_key=None, as_group=False, skip={f.name for f in positionals})
    hints = typing.get_type_hints(cls) if positionals else {}
    for f in positionals:
        _add_positional(parser, f, hints[f.name], docs.get(f.name, ""))
    # jsonargparse skips, without an error, a field whose type hint it cannot resolve: refuse that here.
    dests = {action.dest.split(".", 1)[0] for action in parser._actions}
    lost = [f.name for f in fields if f.name not in dests]
    if lost:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__}: fields {lost} cannot become command-line options "
                        f"(an unresolvable type hint; every name in a hint must be importable in the class's module)")
    for action in parser._actions:
        # jsonargparse reads attribute docstrings of the class itself only: give inherited fields theirs.
        if action.dest in docs and isinstance(action.help, str) and "_EMPTY_HELP_" in action.help:
            action.help = action.help.replace("_EMPTY_HELP_", docs[action.dest].replace("%", "%%"))
        # A true/false flag may stand alone: `--verify` is `--verify true`.
        if action.option_strings and getattr(action, "_typehint", None) is bool and action.nargs is None:
            action.nargs, action.const = "?", True
    for f in fields:
        for alias in f.metadata.get(_ALIASES, ()):
            action = parser._option_string_actions["--" + f.name]
            action.option_strings.append(alias)
            parser._option_string_actions[alias] = action
    return parser


def build_parser(cls: type, prog: str | None = None) -> ArgumentParser:
    parser = Parser(prog=prog, description=(cls.__doc__ or "").strip() or None, exit_on_error=True)
    return add_config_arguments(parser, cls)


def from_namespace(parser: ArgumentParser, cls: type[C], namespace: Any) -> C:
    """Turn a parsed namespace into an instance of ``cls`` (nested dataclasses included)."""
    if getattr(parser, "passthrough", None) is not None:
        return cls(**{parser.passthrough: list(namespace[parser.passthrough])})
    init = parser.instantiate_classes(namespace)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(init).items() if k in names})


def parse(cls: type[C], argv: list[str] | None = None, prog: str | None = None) -> C:
    """Parse command-line flags (and ``--config`` files) into ``cls``."""
    parser = build_parser(cls, prog)
    return from_namespace(parser, cls, parser.parse_args(list(argv or [])))


# ---------------------------------------------------------------------------- sub-commands


class CommandPath:
    """The sub-commands a command line named, filled in as jsonargparse reaches them: ``names`` from the
    outermost in, and the module and parser of the stage they lead to (``None`` until one is named)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.module: ModuleType | None = None
        self.parser: ArgumentParser | None = None

    def config(self, namespace: Any) -> Any:
        """The named stage's ``Config`` from the whole command line's namespace."""
        assert self.module is not None and self.parser is not None
        for name in self.names:
            namespace = namespace[name]
        return from_namespace(self.parser, self.module.Config, namespace)


class _LazySubCommands(ActionSubCommands):
    """Sub-commands whose parsers are filled in when one is named: ``groundup --help`` and a light stage
    import no heavy stage (and a stage whose optional extra is missing fails alone, with its message)."""

    modules: dict[str, str]
    path: CommandPath
    filled: set[str]

    def __call__(self, parser, namespace, values, option_string=None):
        name = values[0]
        if name not in self.filled:
            self.filled.add(name)
            self.path.names.append(name)
            fill_command(self._name_parser_map[name], importlib.import_module(self.modules[name]), self.path)
        super().__call__(parser, namespace, values, option_string)


def add_commands(parser: ArgumentParser, commands: dict[str, tuple[str, str]], dest: str,
                 path: CommandPath) -> None:
    """Sub-commands of ``parser`` from ``commands`` (name -> (module, one line of help)).

    A module with ``Config`` and ``run`` is a stage; a module with ``METHODS`` (a table like
    ``commands``) is a command with sub-commands of its own (``groundup finetune sft``)."""
    action = parser.add_subcommands(required=False, dest=dest, action=_LazySubCommands, metavar=f"<{dest}>",
                                    title=f"{dest}s", description=None)
    action.modules, action.path, action.filled = {name: module for name, (module, _) in commands.items()}, path, set()
    for name, (_, text) in commands.items():
        action.add_subcommand(name, Parser(description=text), help=text)


def fill_command(parser: ArgumentParser, module: ModuleType, path: CommandPath) -> None:
    if hasattr(module, "METHODS"):
        parser.epilog = "\n".join(getattr(module, "NOTES", []))
        add_commands(parser, module.METHODS, "method", path)
    else:
        add_config_arguments(parser, module.Config)
        parser.description = (module.Config.__doc__ or "").strip() or parser.description
        path.module, path.parser = module, parser


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
