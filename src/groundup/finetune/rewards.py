"""Verifiable rewards for reinforcement learning: numeric answers, a format regex, unit tests, your own function.

A reward reads one completion and its prompt's record (the JSONL object) and returns a number:

- ``numeric``: 1 when the completion's final number (:func:`groundup.evaluate.answers.final_answer`:
  ``#### 42``, ``\\boxed{42}`` or the last number) equals the record's ``answer``, else 0;
- ``format``: 1 when the completion matches a regular expression (``re.search``), else 0;
- ``tests``: 1 when the completion (its first fenced code block if it has one) followed by the record's
  ``tests`` (and ``check(entry_point)`` when the record names one) runs to exit 0 in evaluation's sandbox
  (:func:`groundup.evaluate.generation.run_programs`: a separate limited process), else 0;
- ``module:function``: ``function(completion, record) -> float``, imported from your module.

A reward that raises, returns something that is not a finite number, or runs past its timeout scores 0
for that completion and is counted (``reward_errors``, ``reward_timeouts``); the run goes on. A hung
function's thread cannot be stopped from Python and is left running in the background (it is a daemon
thread); write a function that can hang as ``tests`` instead, which run in a killable process.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from groundup.config import import_object
from groundup.evaluate.answers import answers_match
from groundup.evaluate.generation import Limits, code_program, run_programs

RewardFn = Callable[[str, dict], float]

BUILTIN = ("numeric", "format", "tests")
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


@dataclass
class RewardCounts:
    """Completions whose reward failed, by kind (reported in metrics, never silently zero)."""

    errors: int = 0
    timeouts: int = 0
    samples: list[str] = field(default_factory=list)
    """The first few error messages."""

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(message)


def required_fields(names: Sequence[str]) -> set[str]:
    """Record fields the built-in rewards need (a prompt without them is a bad record)."""
    return {field for name, field in (("numeric", "answer"), ("tests", "tests")) if name in names}


def load_function(spec: str) -> RewardFn:
    """``package.module:function`` imported; a clear error when either is missing."""
    fn = import_object(spec, label="reward", usage=f"expected one of {', '.join(BUILTIN)} or 'module:function'")
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: {spec.replace(':', '.')} is not a function")
    return fn


def call_with_timeout(fn: RewardFn, completion: str, record: dict, timeout_s: float,
                      counts: RewardCounts) -> float:
    """``fn(completion, record)`` as a float, or 0 (counted) when it raises, hangs past ``timeout_s`` or
    returns no finite number."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(completion, record)
        except Exception as e:  # a user's reward may raise anything; it is counted, not fatal
            box["error"] = f"{type(e).__name__}: {e}"

    thread = threading.Thread(target=target, daemon=True, name="groundup-reward")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        counts.timeouts += 1
        return 0.0
    if "error" in box:
        counts.error(box["error"])
        return 0.0
    try:
        value = float(box.get("value"))
    except (TypeError, ValueError):
        counts.error(f"returned {box.get('value')!r}, not a number")
        return 0.0
    if not math.isfinite(value):
        counts.error(f"returned {value}")
        return 0.0
    return value


def code_of(completion: str) -> str:
    """The first fenced code block of a completion, else the completion itself."""
    found = _FENCE.search(completion)
    return found.group(1) if found else completion


@dataclass(kw_only=True)
class Rewards:
    """The rewards of a run, weighted and summed; the first one decides whether a completion passed."""

    names: list[str]
    weights: list[float]
    format_regex: str
    timeout_s: float
    test_limits: Limits

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("rewards: give at least one (numeric, format, tests or module:function)")
        if len(self.weights) != len(self.names):
            raise ValueError(f"reward_weights has {len(self.weights)} values for {len(self.names)} rewards")
        self._pattern = re.compile(self.format_regex)
        self._functions = {n: load_function(n) for n in self.names if n not in BUILTIN}

    def score(self, completions: Sequence[str], records: Sequence[dict],
              counts: RewardCounts) -> tuple[list[float], list[bool]]:
        """Each completion's total reward and whether it passed (its first reward at 1 or more)."""
        columns = [self._column(name, completions, records, counts) for name in self.names]
        totals = [sum(w * col[i] for w, col in zip(self.weights, columns, strict=True))
                  for i in range(len(completions))]
        return totals, [v >= 1.0 for v in columns[0]]

    def _column(self, name: str, completions: Sequence[str], records: Sequence[dict],
                counts: RewardCounts) -> list[float]:
        if name == "numeric":
            return [float(answers_match(c, str(r["answer"]))) for c, r in zip(completions, records, strict=True)]
        if name == "format":
            return [float(self._pattern.search(c) is not None) for c in completions]
        if name == "tests":
            programs = [code_program("", code_of(c), str(r["tests"]), str(r.get("entry_point", "")))
                        for c, r in zip(completions, records, strict=True)]
            outcomes = run_programs(programs, self.test_limits)
            counts.timeouts += sum(o.status == "timeout" for o in outcomes)
            return [float(o.passed) for o in outcomes]
        fn = self._functions[name]
        return [call_with_timeout(fn, c, r, self.timeout_s, counts) for c, r in zip(completions, records, strict=True)]
