"""Multiple choice by log-likelihood: acc, acc_norm (by characters), per subject and overall, with stderr.

Each choice is scored as the continuation ``target_delimiter + choice`` of the item's context, exactly
as lm-evaluation-harness builds its requests (``TemplateLM.loglikelihood``): trailing spaces of the
context move to the continuation, the pair is encoded whole and split at the context's length, and
an empty context is replaced by the EOS token. ``acc`` takes the choice of highest log-likelihood,
``acc_norm`` the highest log-likelihood per character of the choice; the standard error of a mean
of 0/1 scores is the sample standard deviation over sqrt(n) (lm-eval's ``mean_stderr``).

Each task also reports ``random_baseline`` (the mean over items of 1 / number of choices) and
``acc_centered`` = (acc - baseline) / (1 - baseline); :func:`core_score` averages the centred accuracies
of several tasks, as DCLM's CORE score does (``groundup evaluate`` reports it as the ``CORE`` row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from groundup.evaluate.tasks import Task
from groundup.infer.score import ScoreRequest, score_requests


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``TemplateLM._encode_pair`` plus its empty-context rule, for a causal model."""
    if not context:
        cont = tokenizer.encode(continuation)
        prefix = tokenizer.eos_id
        if prefix is None:
            raise ValueError("empty context and no EOS token to stand for it")
        return ([prefix], cont) if cont[:1] != [prefix] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def mean_stderr(values: Sequence[float]) -> float:
    """Sample standard deviation over sqrt(n), as lm-eval reports ``acc_stderr``."""
    n = len(values)
    if n < 2:
        return math.nan
    mu = sum(values) / n
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def summarize(values: dict[str, list[float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric, xs in values.items():
        out[metric] = sum(xs) / len(xs) if xs else math.nan
        out[metric + "_stderr"] = mean_stderr(xs)
    out["n"] = len(next(iter(values.values()), []))
    return out


def evaluate_multiple_choice(model, tokenizer, task: Task, *, num_fewshot: int = 0, seed: int = 1234,
                             batch_size: int = 16, limit: int | None = None, device=None,
                             progress: bool = False) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Score a multiple-choice task; returns ({task or task/subject: metrics}, samples).

    With subjects (MMLU), each subject is reported as ``task/subject`` and ``task`` holds the average over
    all items (the micro average, lm-eval's group score weighted by size).
    """
    items = task.items[:limit] if limit else task.items
    requests, owner = [], []
    contexts = task.contexts(items, num_fewshot=num_fewshot, seed=seed)
    for i, (item, context) in enumerate(zip(items, contexts, strict=True)):
        for choice in item.choices:
            ctx, cont = encode_pair(tokenizer, context, task.target_delimiter + choice)
            if not cont:
                raise ValueError(f"{item.source}: choice {choice!r} encodes to no tokens")
            requests.append(ScoreRequest(tuple(ctx), tuple(cont)))
            owner.append(i)
    scores = score_requests(model, requests, batch_size=batch_size, device=device, progress=progress)

    per_item: list[list] = [[] for _ in items]
    for i, s in zip(owner, scores, strict=True):
        per_item[i].append(s)
    samples, groups, baselines = [], {}, {}
    for i, (item, item_scores) in enumerate(zip(items, per_item, strict=True)):
        lls = np.array([s.loglikelihood for s in item_scores])
        lengths = np.array([float(len(c)) for c in item.choices])
        pred, pred_norm = int(np.argmax(lls)), int(np.argmax(lls / lengths))
        acc, acc_norm = float(pred == item.gold), float(pred_norm == item.gold)
        for key in [task.name] + ([f"{task.name}/{item.subject}"] if item.subject else []):
            group = groups.setdefault(key, {"acc": [], "acc_norm": []})
            group["acc"].append(acc)
            group["acc_norm"].append(acc_norm)
            baselines.setdefault(key, []).append(1.0 / len(item.choices))
        samples.append({"task": task.name, "index": i, "source": item.source, "subject": item.subject,
                        "prompt": contexts[i], "choices": item.choices, "gold": item.gold,
                        "loglikelihoods": lls.tolist(), "is_greedy": [s.is_greedy for s in item_scores],
                        "prediction": pred, "prediction_norm": pred_norm, "acc": acc, "acc_norm": acc_norm})
    results = {}
    for key, values in groups.items():
        results[key] = summarize(values)
        results[key]["random_baseline"] = sum(baselines[key]) / len(baselines[key])
        results[key]["acc_centered"] = centered(results[key]["acc"], results[key]["random_baseline"])
    return results, samples


def centered(accuracy: float, baseline: float) -> float:
    """CORE's centring (DCLM): accuracy rescaled so the random baseline is 0 and a perfect score 1,
    (acc - b) / (1 - b)."""
    if not 0 <= baseline < 1:
        raise ValueError(f"a random baseline must lie in [0, 1), got {baseline}")
    return (accuracy - baseline) / (1.0 - baseline)


def core_score(results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """A CORE-style aggregate: the mean of each multiple-choice task's centred accuracy (whole tasks, not their
    subjects); None when no task has one."""
    values = {task: m["acc_centered"] for task, m in results.items() if "/" not in task and "acc_centered" in m}
    if not values:
        return None
    return {"core": sum(values.values()) / len(values), "n": len(values), "tasks": sorted(values)}
