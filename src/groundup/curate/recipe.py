"""The recipe: which steps a run applies, in order, each with its parameters; the default is FineWeb's.

A recipe is a list of steps in YAML (the ``recipe`` section of the curate config)::

    recipe:
      steps:
        - url_filter                    # a name alone: the step with its default parameters
        - extract: {extractor: trafilatura}
        - language: {languages: [en, fr], threshold: 0.7}
        - gopher_quality: {min_doc_words: 100}

Every step type is a dataclass whose fields are its parameters (their defaults are the published
thresholds) and whose one method filters or rewrites a document; :data:`STEPS` maps each name to
its type, and :func:`register_step` adds one. A recipe is checked when it is made: an unknown step,
an unknown parameter or a value of the wrong type is a one-line error naming the step. The saved
``config.yaml`` holds every parameter of every step, defaults included, so it says exactly what ran.

The default, :data:`FINEWEB_STEPS`, follows FineWeb (Penedo et al. 2024): URL blocklist -> main-text
extraction -> English with fastText score >= 0.65 -> Gopher repetition -> Gopher quality -> C4
rules without the terminal-punctuation one -> FineWeb's custom rules -> (MinHash dedup) -> PII.
Here Unicode fixing follows extraction, and PII redaction comes before deduplication, so
duplicates are judged on the text that is written. One threshold departs from the reference code
on purpose: the fraction of characters in duplicated lines is 0.1, as the FineWeb paper gives it;
datatrove's ``FineWebQualityFilter`` defaults to 0.01, which drops every page with a single
repeated line of some length.

The second built-in recipe, :data:`CODE_STEPS` (``code``), is for technical pages: documentation,
tutorials and answers that mix prose with code. Its extraction keeps ``<pre>`` blocks byte for byte, its line
rules keep indentation, blank lines and short code lines, and its thresholds are loosened where code is not
prose (see :data:`CODE_STEPS`). A recipe names it in place of its steps: ``steps: code``, or inside a list,
``steps: [code, {decontaminate: {files: [...]}}]``, where a built-in recipe's name stands for its steps.
"""

from __future__ import annotations

import dataclasses
from argparse import ArgumentError
from dataclasses import dataclass, field
from typing import Any

from groundup.curate.decontam import Decontaminate
from groundup.curate.extract import Extractor
from groundup.curate.filters.c4 import C4QualityFilter
from groundup.curate.filters.fineweb import FineWebQualityFilter
from groundup.curate.filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from groundup.curate.filters.language import LanguageFilter
from groundup.curate.filters.length import LengthFilter
from groundup.curate.filters.url import URLFilter
from groundup.curate.pii import PIIRedactor
from groundup.curate.scorer import ScoreFilter
from groundup.curate.steps import Filter, Formatter, Step
from groundup.curate.unicode import UnicodeFixer

STEPS: dict[str, type[Step]] = {}
"""Step name -> step type: the names a recipe may use (the built-in ones, and any :func:`register_step` added)."""


def register_step(cls: type[Step]) -> type[Step]:
    """Make ``cls`` usable in recipes under its ``name``; returns ``cls`` (so it also works as a decorator).

    ``cls`` is a dataclass subclass of :class:`~groundup.curate.steps.Filter` or
    :class:`~groundup.curate.steps.Formatter`, its fields are its parameters (each with a default
    and a type hint), and its class attribute ``name`` is the step's name in recipes and in
    ``stats.json``. Registering the same class again does nothing; another class under a taken name
    is refused.
    """
    if not (isinstance(cls, type) and issubclass(cls, (Filter, Formatter)) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"a recipe step must be a dataclass subclass of Filter or Formatter, got {cls!r}")
    name = cls.name
    if not isinstance(name, str) or not name.isidentifier() or name in ("filter", "formatter"):
        raise ValueError(f"{cls.__qualname__}: set the class attribute `name` to the step's name (an identifier)")
    for f in dataclasses.fields(cls):
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{cls.__qualname__}: parameter {f.name!r} needs a default")
    if STEPS.get(name, cls) is not cls:
        raise ValueError(f"recipe step {name!r} is already registered ({STEPS[name].__qualname__})")
    STEPS[name] = cls
    return cls


for _builtin in (URLFilter, Extractor, UnicodeFixer, LengthFilter, LanguageFilter, GopherRepetitionFilter,
                 GopherQualityFilter, C4QualityFilter, FineWebQualityFilter, PIIRedactor, Decontaminate,
                 ScoreFilter):
    register_step(_builtin)

FINEWEB_STEPS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("url_filter", {}),
    ("extract", {}),
    ("unicode_fix", {}),
    ("language", {}),
    ("gopher_repetition", {}),
    ("gopher_quality", {}),
    ("c4_quality", {"filter_no_terminal_punct": False}),  # FineWeb's setting: that rule alone removed 30% of tokens
    ("fineweb_quality", {}),
    ("pii", {}),
)
"""The default recipe: (step, parameters that differ from the step's defaults)."""

CODE_STEPS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("url_filter", {}),
    ("extract", {"keep_code": True}),  # <pre> byte for byte, line-number gutters skipped
    ("unicode_fix", {}),
    # fastText's English score falls on a page that is half code; the page must still be English
    ("language", {"threshold": 0.4}),
    # code repeats lines (`}`, `return`, `else:`) and n-grams (`self.x = x`) that prose does not
    ("gopher_repetition", {"dup_line_frac": 0.5, "dup_line_char_frac": 0.3, "dup_para_frac": 0.5,
                           "dup_para_char_frac": 0.3, "top_n_grams": [[2, 0.3], [3, 0.25], [4, 0.2]],
                           "dup_n_grams": [[5, 0.3], [6, 0.28], [7, 0.26], [8, 0.24], [9, 0.22], [10, 0.2]]}),
    # dotted names (`os.path.join`) are long words; `#` starts comments; numbers and operators are words
    ("gopher_quality", {"max_avg_word_length": 15, "max_symbol_word_ratio": 0.5, "max_non_alpha_words_ratio": 0.5}),
    # lines as they are: indentation, blank lines and one-word lines kept; no curly-bracket, "javascript" or
    # citation-mark rules (all three are code); pages still need 5 lines and no "lorem ipsum"
    ("c4_quality", {"filter_no_terminal_punct": False, "strip_lines": False, "min_words_per_line": 0,
                    "filter_curly_bracket": False, "filter_javascript": False, "remove_citations": False}),
    # code lines end in no punctuation and many are short; FineWeb's newline and duplicate rules loosened
    ("fineweb_quality", {"line_punct_thr": 0.0, "short_line_thr": 0.9, "char_duplicates_ratio": 0.3,
                         "new_line_ratio": 1.0}),
    ("pii", {}),
)
"""The code-and-docs recipe (technical pages: documentation, tutorials, answers with code)."""

RECIPES: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {"fineweb": FINEWEB_STEPS, "code": CODE_STEPS}
"""Built-in recipes by name; a recipe's steps may name one in place of its steps."""


@dataclass(kw_only=True)
class RecipeConfig:
    """The filtering and redaction steps, in order, with their parameters (defaults: FineWeb's recipe)."""

    steps: list[str | dict[str, Any]] | str = field(
        default_factory=lambda: [{name: dict(params)} for name, params in FINEWEB_STEPS])
    """The steps in order, each `name` or `name: {parameter: value, ...}` (unnamed parameters keep their
    defaults), or a built-in recipe's name (fineweb, code) standing for its steps, alone (`code`) or in the
    list. Steps: url_filter, extract, unicode_fix, length, language, gopher_repetition, gopher_quality,
    c4_quality, fineweb_quality, pii, decontaminate, score; docs/curate.md lists their parameters.
    Default: FineWeb's recipe (web prose); `code` for technical pages with code."""

    def __post_init__(self) -> None:
        self.steps = resolve_steps(self.steps)


def _step_and_parameters(item: Any, position: int) -> tuple[str, dict[str, Any]]:
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and len(item) == 1:
        name, params = next(iter(item.items()))
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ValueError(f"recipe step {name!r}: parameters must be a mapping like "
                             f"{{threshold: 0.5}}, got {params!r}")
        return str(name), params
    raise ValueError(f"recipe step {position + 1}: write a step as `name` or `name: {{parameter: value}}`, "
                     f"got {item!r}")


_parsers: dict[type, Any] = {}


def _parser(cls: type[Step]):
    """A jsonargparse parser of the step's parameters (the same type checks as command-line flags), cached."""
    parser = _parsers.get(cls)
    if parser is None:
        from jsonargparse import ArgumentParser

        from groundup.config import add_config_arguments

        parser = add_config_arguments(ArgumentParser(exit_on_error=False), cls)
        _parsers[cls] = parser
    return parser


def resolve_parameters(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Every parameter of step ``name``: the given ones checked against their types, the others' defaults."""
    if name not in STEPS:
        raise ValueError(f"recipe step {name!r} is unknown (known steps: {', '.join(STEPS)})")
    cls = STEPS[name]
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in params if key not in fields]
    if unknown:
        raise ValueError(f"recipe step {name!r}: unknown parameter {unknown[0]!r} "
                         f"(its parameters: {', '.join(fields) or 'none'})")
    parser = _parser(cls)
    try:
        resolved = parser.parse_object(params)
    except ArgumentError:
        for key, value in params.items():  # name the first parameter that does not check
            try:
                parser.parse_object({key: value})
            except ArgumentError:
                raise ValueError(f"recipe step {name!r}: {key}={value!r} is not a valid "
                                 f"{fields[key].type}") from None
        raise
    return {key: resolved[key] for key in fields}


def resolve_steps(steps: list[Any]) -> list[dict[str, dict[str, Any]]]:
    """Steps as ``[{name: {every parameter: value}}, ...]``, checked (see :func:`resolve_parameters`)."""
    if isinstance(steps, str) and steps in RECIPES:
        steps = [steps]
    if not isinstance(steps, (list, tuple)):
        raise ValueError(f"recipe steps must be a list or a built-in recipe's name ({', '.join(RECIPES)}), "
                         f"got {steps!r}")
    steps = [item for step in steps
             for item in ([{n: dict(p)} for n, p in RECIPES[step]] if isinstance(step, str) and step in RECIPES
                          else [step])]
    resolved: list[dict[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for position, item in enumerate(steps):
        name, params = _step_and_parameters(item, position)
        if name in seen:
            raise ValueError(f"recipe step {name!r} appears twice (statistics are kept per step name)")
        seen.add(name)
        resolved.append({name: resolve_parameters(name, params)})
    return resolved


def build_steps(cfg: RecipeConfig) -> list[Step]:
    """The steps of ``cfg``, in order, ready for a :class:`~groundup.curate.steps.Chain`."""
    steps: list[Step] = []
    for item in cfg.steps:
        (name, params), = item.items()
        try:
            steps.append(STEPS[name](**params))
        except (ValueError, OSError) as e:  # a bad value or a missing file: name the step, keep the type
            raise type(e)(f"recipe step {name!r}: {e}") from e
    return steps
