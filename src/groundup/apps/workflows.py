"""The five workflow patterns, over any :class:`~groundup.apps.client.ChatModel`.

- ``chain``: prompt chaining: typed steps, each prompt filled with the previous output, a gate after any
  step that may stop the chain;
- ``route``: the model picks one of named routes for an input, and that route's handler answers;
- ``sections`` and ``vote``: parallelisation: different prompts at once, or one prompt many times with the
  majority answer, under a concurrency limit;
- ``orchestrate``: orchestrator-workers: the model splits a task into subtasks, workers answer them in
  parallel, the model combines their answers;
- ``refine``: evaluator-optimiser: generate, evaluate, revise with the feedback, at most ``max_iterations``.

Every model call lands in the model's trace.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from groundup.apps.client import ChatModel
from groundup.apps.trace import AppError


class GateError(AppError):
    """A chain's gate refused a step's output."""


@dataclass
class Step:
    """One step of a chain: ``prompt`` is formatted with ``input`` (the previous step's output, or the
    chain's input) and the earlier steps' outputs by name; ``parse`` turns the reply into the step's typed
    output; ``gate`` (output -> bool) may stop the chain there."""

    name: str
    prompt: str
    parse: Callable[[str], Any] = str.strip
    gate: Callable[[Any], bool] | None = None
    system: str | None = None


@dataclass
class ChainResult:
    outputs: dict[str, Any]
    """Each step's parsed output, by name, for the steps that ran."""
    passed: bool
    """False when a gate stopped the chain (``stopped_at`` names the step)."""
    stopped_at: str | None = None

    @property
    def output(self) -> Any:
        return list(self.outputs.values())[-1] if self.outputs else None


def chain(model: ChatModel, steps: Sequence[Step], input: Any) -> ChainResult:
    """Run ``steps`` in order. A parse error is a GateError naming the step; a gate that says no ends the
    chain with ``passed=False``."""
    outputs: dict[str, Any] = {}
    current = input
    for step in steps:
        reply = model.complete(step.prompt.format(input=current, **outputs), system=step.system)
        try:
            current = step.parse(reply)
        except (ValueError, TypeError) as e:
            raise GateError(f"chain step {step.name}: cannot parse the reply {reply[:120]!r}: {e}") from None
        outputs[step.name] = current
        if step.gate is not None and not step.gate(current):
            return ChainResult(outputs, passed=False, stopped_at=step.name)
    return ChainResult(outputs, passed=True)


ROUTER = ("Classify the input into exactly one of these categories: {names}.\n{descriptions}\n"
          "Answer with the category name only.\n\nInput:\n{input}")


@dataclass
class RouteResult:
    route: str
    output: Any


def route(model: ChatModel, input: str, routes: dict[str, Callable[[str], Any]], *,
          descriptions: dict[str, str] | None = None, default: str | None = None) -> RouteResult:
    """Ask the model which route fits ``input`` and run that route's handler on it. A reply naming no
    route takes ``default`` (or raises GateError when there is none)."""
    names = list(routes)
    lines = "\n".join(f"- {n}: {d}" for n, d in (descriptions or {}).items())
    reply = model.complete(ROUTER.format(names=", ".join(names), descriptions=lines, input=input))
    chosen = pick(reply, names) or default
    if chosen is None:
        raise GateError(f"route: the model's answer {reply[:120]!r} names none of {names}")
    return RouteResult(chosen, routes[chosen](input))


def pick(reply: str, names: Sequence[str]) -> str | None:
    """The name in ``names`` that ``reply`` mentions first (case-insensitive, whole words)."""
    found = [(m.start(), n) for n in names for m in [re.search(rf"\b{re.escape(n)}\b", reply, re.I)] if m]
    return min(found)[1] if found else None


class _Limited:
    """Runs callables in a pool of ``max_concurrency`` threads; results in the order given."""

    def __init__(self, max_concurrency: int) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        self.max_concurrency = max_concurrency

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, max(1, len(items)))) as pool:
            return list(pool.map(fn, items))


def sections(model: ChatModel, prompts: Sequence[str], *, max_concurrency: int = 4,
             system: str | None = None) -> list[str]:
    """Sectioning: answer independent prompts at once (at most ``max_concurrency`` requests in flight)."""
    return _Limited(max_concurrency).map(lambda p: model.complete(p, system=system), prompts)


@dataclass
class VoteResult:
    winner: Any
    counts: dict[Any, int]
    answers: list[Any]


def vote(model: ChatModel, prompt: str, *, n: int = 5, max_concurrency: int = 4,
         parse: Callable[[str], Any] = str.strip, **params: Any) -> VoteResult:
    """Voting: ask the same prompt ``n`` times (sample with temperature > 0 for different answers); the
    most common parsed answer wins (the earliest on a tie). Replies that do not parse are not counted."""

    def one(_: int) -> Any:
        try:
            return parse(model.complete(prompt, **params))
        except (ValueError, TypeError):
            return None

    answers = _Limited(max_concurrency).map(one, range(n))
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        raise GateError(f"vote: none of the {n} answers to {prompt[:80]!r} could be parsed")
    return VoteResult(counts.most_common(1)[0][0], dict(counts), answers)


ORCHESTRATOR = ("Break this task into at most {max_subtasks} independent subtasks. Answer with a JSON list "
                "of strings only.\n\nTask:\n{task}")
WORKER = "Overall task:\n{task}\n\nDo this part of it:\n{subtask}"
SYNTHESIS = "Task:\n{task}\n\nAnswers to its parts:\n{parts}\n\nCombine them into one answer to the task."


@dataclass
class OrchestrateResult:
    subtasks: list[str]
    results: list[str]
    answer: str


def subtasks_of(reply: str, max_subtasks: int) -> list[str]:
    """The orchestrator's subtasks: a JSON list of strings in the reply, else its non-empty lines."""
    match = re.search(r"\[.*\]", reply, re.S)
    items: list[Any] = []
    if match:
        try:
            items = json.loads(match.group(0))
        except json.JSONDecodeError:
            items = []
    if not isinstance(items, list) or not items:
        items = [line.strip(" -*\t") for line in reply.splitlines()]
    return [str(i).strip() for i in items if str(i).strip()][:max_subtasks]


def orchestrate(model: ChatModel, task: str, *, max_subtasks: int = 5, max_concurrency: int = 4,
                worker: ChatModel | None = None) -> OrchestrateResult:
    """Orchestrator-workers: plan subtasks, answer each (``worker`` model, default the same), combine."""
    subtasks = subtasks_of(model.complete(ORCHESTRATOR.format(max_subtasks=max_subtasks, task=task)), max_subtasks)
    if not subtasks:
        raise GateError(f"orchestrate: the orchestrator named no subtasks for {task[:80]!r}")
    workers = worker or model
    results = _Limited(max_concurrency).map(lambda s: workers.complete(WORKER.format(task=task, subtask=s)),
                                            subtasks)
    parts = "\n\n".join(f"{i + 1}. {s}\n{r}" for i, (s, r) in enumerate(zip(subtasks, results, strict=True)))
    return OrchestrateResult(subtasks, results, model.complete(SYNTHESIS.format(task=task, parts=parts)))


EVALUATOR = ("Evaluate this answer to the task. If it is fully correct and complete, reply PASS. Otherwise "
             "reply FAIL: followed by what to fix.\n\nTask:\n{task}\n\nAnswer:\n{answer}")
REVISER = "Task:\n{task}\n\nYour previous answer:\n{answer}\n\nFeedback:\n{feedback}\n\nWrite an improved answer."


@dataclass
class RefineResult:
    answer: str
    accepted: bool
    iterations: int
    history: list[dict[str, str]] = field(default_factory=list)
    """Each iteration's answer and the evaluator's feedback."""


def refine(model: ChatModel, task: str, *, max_iterations: int = 3, evaluator: ChatModel | None = None,
           accept: Callable[[str], bool] = lambda verdict: verdict.strip().upper().startswith("PASS")) -> RefineResult:
    """Evaluator-optimiser: answer ``task``, have ``evaluator`` (default: the same model) judge it, revise
    with its feedback, until it passes or ``max_iterations`` answers were written."""
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, not {max_iterations}")
    judge = evaluator or model
    answer = model.complete(task)
    history: list[dict[str, str]] = []
    for iteration in range(1, max_iterations + 1):
        verdict = judge.complete(EVALUATOR.format(task=task, answer=answer))
        history.append({"answer": answer, "feedback": verdict})
        if accept(verdict):
            return RefineResult(answer, True, iteration, history)
        if iteration == max_iterations:
            break
        feedback = re.sub(r"^\s*FAIL:?\s*", "", verdict, flags=re.I)
        answer = model.complete(REVISER.format(task=task, answer=answer, feedback=feedback))
    return RefineResult(answer, False, max_iterations, history)


