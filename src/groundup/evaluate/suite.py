"""Run a set of tasks on a model in memory: the part `groundup evaluate` and evaluation during training share."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from groundup.evaluate import generation as gen
from groundup.evaluate.generation import Limits
from groundup.evaluate.lm import LMScore, score_documents, score_token_documents, split_token_shard
from groundup.evaluate.multiple_choice import evaluate_multiple_choice, summarize
from groundup.evaluate.needle import NeedleSettings
from groundup.evaluate.tasks import Task, load_task

NEEDLE_TASK = "needle"
"""The task spec of the needle-in-a-haystack grid (generated, not read from a file)."""


@dataclass(kw_only=True)
class TaskSettings:
    """How tasks are run (the same fields in `groundup evaluate` and in a training run's `eval_tasks`)."""

    num_fewshot: int = 0
    """Solved examples from the dev split put before each multiple-choice or generation item."""
    seed: int = 1234
    """Seed of the few-shot draws and of sampled code completions."""
    batch_size: int = 16
    """Sequences per forward pass; scores do not depend on it."""
    limit: int | None = None
    """Score only the first N items of each task (None: all)."""
    stride: int | None = None
    """Perplexity: tokens predicted per rolling window after the first (default: the model's block_size,
    lm-evaluation-harness's disjoint windows); smaller gives every token more context at more cost."""
    max_new_tokens: int = 64
    """Generation and code: most tokens generated per answer."""
    until: list[str] = field(default_factory=lambda: ["\n\n"])
    """Generation: stop sequences (the text is cut before the first one)."""
    code_samples: int = 1
    """Code: completions sampled per problem (greedy when 1; temperature `code_temperature` otherwise)."""
    code_temperature: float = 0.8
    """Code: sampling temperature when code_samples > 1."""
    pass_k: list[int] = field(default_factory=lambda: [1, 10, 100])
    """Code: the k of pass@k reported (those up to code_samples)."""
    code_limits: Limits = field(default_factory=Limits)
    """Code: time and memory limits of each candidate program."""
    ifeval_max_new_tokens: int = 1280
    """IFEval: most tokens per response (lm-eval's ifeval: 1280); a response ends at EOS or the chat template's
    end of turn, never at `until`."""
    chat: Literal["auto", "on", "off"] = "auto"
    """IFEval: prompt as the user turn of the model dir's chat template ('auto': when the model dir has a
    chat_template.jinja, as fine-tuned chat models do; 'on': ChatML when it has none; 'off': the bare prompt)."""
    needle: NeedleSettings = field(default_factory=NeedleSettings)
    """Needle in a haystack (the task `needle`): the grid of prompt lengths and depths."""


def token_shard_task(path: Path) -> Task:
    from groundup.evaluate.tasks import Item

    return Task(name=path.parent.name + "/" + path.stem, kind="perplexity", items=[Item(query="", source=str(path))],
                files=[path, path.parent / "meta.json"])


def split_specs(specs: str | Sequence[str | Path]) -> list[str | Path]:
    """``a.jsonl,mmlu/`` (one comma-separated string, as typed on a command line) or a list."""
    if isinstance(specs, str):
        return [s.strip() for s in specs.split(",") if s.strip()]
    return list(specs)


def needle_task(name: str = NEEDLE_TASK) -> Task:
    """The needle-in-a-haystack grid as a task: its prompts are built at run time, in the model's tokens."""
    return Task(name=name, kind="needle", items=[], files=[])


def load_tasks(specs: str | Sequence[str | Path]) -> list[Task]:
    specs = split_specs(specs)
    tasks = []
    for spec in specs:
        path = Path(str(spec).split("=", 1)[-1]) if not Path(str(spec)).exists() else Path(spec)
        if str(path) == NEEDLE_TASK and not path.exists():
            tasks.append(needle_task(str(spec).split("=", 1)[0] if "=" in str(spec) else NEEDLE_TASK))
        elif path.suffix == ".bin":
            tasks.append(token_shard_task(path))
        else:
            tasks.append(load_task(spec))
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"several tasks named {dupes}: name them with name=path")
    return tasks


def evaluate_task(model, tokenizer, task: Task, settings: TaskSettings, *, device=None, progress: bool = False,
                  chat_template: str | None = None) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Scores ({result key: {metric: value}}) and samples of one task. ``chat_template``: the model's, for the
    tasks that prompt a chat model through it (IFEval, as `settings.chat` says)."""
    if task.kind == "multiple_choice":
        return evaluate_multiple_choice(model, tokenizer, task, num_fewshot=settings.num_fewshot,
                                        seed=settings.seed, batch_size=settings.batch_size, limit=settings.limit,
                                        device=device, progress=progress)
    if task.kind == "perplexity":
        return _perplexity(model, tokenizer, task, settings, device=device, progress=progress)
    if task.kind == "generation":
        return _generation(model, tokenizer, task, settings)
    if task.kind == "code":
        return _code(model, tokenizer, task, settings)
    if task.kind == "ifeval":
        return _ifeval(model, tokenizer, task, settings, chat_template)
    if task.kind == "needle":
        return _needle(model, tokenizer, task, settings)
    raise ValueError(f"task {task.name}: unknown kind {task.kind!r}")


def _perplexity(model, tokenizer, task: Task, settings: TaskSettings, *, device=None, progress=False):
    items = task.items[: settings.limit] if settings.limit else task.items
    if task.files[0].suffix == ".bin":
        from groundup.tokens.datasets import load_tokens

        shard = task.files[0]
        tokens = load_tokens(shard.parent, shard.stem)
        docs = split_token_shard(np.asarray(tokens), tokenizer.eos_id)[: settings.limit or None]
        texts = [tokenizer.decode_bytes(d.tolist()).decode("utf-8", errors="replace") for d in docs]
        scores = score_token_documents(model, [d.tolist() for d in docs], texts=texts, prefix_token=tokenizer.eos_id,
                                       stride=settings.stride, batch_size=settings.batch_size, device=device,
                                       progress=progress)
        # bytes as the shard stores them, not the re-encoded text (they differ only on broken UTF-8)
        for s, d in zip(scores, docs, strict=True):
            s.bytes = len(tokenizer.decode_bytes(d.tolist()))
        sources = [f"{shard}#doc{i}" for i in range(len(docs))]
    else:
        texts = [item.query for item in items]
        scores = score_documents(model, tokenizer, texts, stride=settings.stride, batch_size=settings.batch_size,
                                 device=device, progress=progress)
        sources = [item.source for item in items]
    total = LMScore()
    samples = []
    for i, (s, source) in enumerate(zip(scores, sources, strict=True)):
        total.add(s)
        samples.append({"task": task.name, "index": i, "source": source, "loglikelihood": s.loglikelihood,
                        "tokens": s.tokens, "bytes": s.bytes, "words": s.words})
    metrics = total.metrics()
    metrics["n"] = total.documents
    return {task.name: metrics}, samples


def _generation(model, tokenizer, task: Task, settings: TaskSettings):
    items = task.items[: settings.limit] if settings.limit else task.items
    prompts = task.contexts(items, num_fewshot=settings.num_fewshot, seed=settings.seed)
    predictions = gen.generate_until(model, tokenizer, prompts, until=settings.until,
                                     max_new_tokens=settings.max_new_tokens)
    samples = [{"task": task.name, "index": i, "source": item.source, "prompt": prompt,
                "references": item.references, "prediction": text, "exact_match": gen.exact_match(text, item.references)}
               for i, (item, prompt, text) in enumerate(zip(items, prompts, predictions, strict=True))]
    references = [item.references for item in items]
    per_item = {"exact_match": [s["exact_match"] for s in samples], **gen.rouge(predictions, references)}
    metrics: dict[str, Any] = summarize(per_item)
    metrics["bleu"], metrics["bleu_signature"] = gen.bleu(predictions, references)
    metrics["chrf"], metrics["chrf_signature"] = gen.chrf(predictions, references)
    return {task.name: metrics}, samples


def _code(model, tokenizer, task: Task, settings: TaskSettings):
    items = task.items[: settings.limit] if settings.limit else task.items
    n = settings.code_samples
    temperature = settings.code_temperature if n > 1 else 0.0
    completions = gen.generate_until(model, tokenizer, [item.query for item in items for _ in range(n)],
                                     until=["\ndef ", "\nclass ", "\nif __name__", "\nprint("],
                                     max_new_tokens=settings.max_new_tokens, temperature=temperature,
                                     seeds=[settings.seed + 1000 * i + j for i in range(len(items)) for j in range(n)])
    programs = [gen.code_program(item.query, completions[i * n + j], item.test, item.entry_point)
                for i, item in enumerate(items) for j in range(n)]
    outcomes = gen.run_programs(programs, settings.code_limits)
    passed, samples = [], []
    for i, item in enumerate(items):
        mine = outcomes[i * n:(i + 1) * n]
        passed.append([o.passed for o in mine])
        samples.append({"task": task.name, "index": i, "source": item.source, "prompt": item.query,
                        "completions": completions[i * n:(i + 1) * n], "status": [o.status for o in mine]})
    metrics = gen.pass_at_k_scores(passed, settings.pass_k)
    metrics["n"] = len(items)
    return {task.name: metrics}, samples


def _ifeval(model, tokenizer, task: Task, settings: TaskSettings, chat_template: str | None):
    from groundup.evaluate import ifeval
    from groundup.tokenizer.chat import DEFAULT_CHAT_TEMPLATE

    items = task.items[: settings.limit] if settings.limit else task.items
    template = {"auto": chat_template, "on": chat_template or DEFAULT_CHAT_TEMPLATE, "off": None}[settings.chat]
    responses = gen.generate_until(model, tokenizer, [item.query for item in items], until=[],
                                   max_new_tokens=settings.ifeval_max_new_tokens, chat_template=template)
    scored = [ifeval.score_response(r, item.instructions) for item, r in zip(items, responses, strict=True)]
    metrics: dict[str, Any] = ifeval.aggregate(scored)
    metrics["n"] = len(items)
    results = {task.name: metrics}
    for instruction_id, scores in ifeval.per_instruction([item.instructions for item in items], scored).items():
        results[f"{task.name}/{instruction_id}"] = scores
    samples = [{"task": task.name, "index": i, "source": item.source, "prompt": item.query, "chat": template is not None,
                "instruction_id_list": [x["id"] for x in item.instructions], "prediction": response,
                "follow_instruction_list": s["strict"], "follow_instruction_list_loose": s["loose"]}
               for i, (item, response, s) in enumerate(zip(items, responses, scored, strict=True))]
    return results, samples


def _needle(model, tokenizer, task: Task, settings: TaskSettings):
    from groundup.evaluate.needle import evaluate_needle

    def generate(prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        return gen.generate_until(model, tokenizer, prompts, max_new_tokens=max_new_tokens)

    metrics, samples = evaluate_needle(generate, tokenizer, settings.needle, block_size=model.config.block_size,
                                       seed=settings.seed)
    return {task.name: metrics}, [{"task": task.name, **s} for s in samples]


def flat_scores(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``eval/<task>/<metric>`` keys for metrics.jsonl (numbers only, no stderr or counts)."""
    out = {}
    for task, metrics in results.items():
        for metric, value in metrics.items():
            if metric.endswith("_stderr") or metric in ("n", "tokens", "bytes", "words", "documents"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[f"eval/{task}/{metric}"] = round(float(value), 6)
    return out
