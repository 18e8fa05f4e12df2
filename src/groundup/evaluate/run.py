"""The evaluate stage: a model dir and local task files in; results.json, samples.jsonl and a table out.

::

    groundup evaluate --model runs/x/model --tasks hellaswag.jsonl,mmlu/,held_out.txt --out runs/x/eval

``results.json``::

    {"results": {task: {metric: value, metric + "_stderr": value, "n": items}},
     "config": {...}, "model": {"path", "manifest_sha256", ...}, "tasks": {task: {"file", "sha256"}}}

``samples.jsonl`` holds one line per item: its prompt, choices, log-likelihoods, prediction (or the
generated text, the code's outcome, the judge's verdict).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from groundup import config as configlib
from groundup.artifacts import JsonlStats, prepare_out, read_jsonl, write_json, write_manifest
from groundup.evaluate.generation import Limits  # noqa: F401 (jsonargparse resolves inherited hints here)
from groundup.evaluate.judge import Judge, JudgeConfig
from groundup.evaluate.multiple_choice import core_score
from groundup.evaluate.suite import NEEDLE_TASK, TaskSettings, evaluate_task, load_tasks, split_specs
from groundup.model.io import load_model_dir
from groundup.model.transformer import first_tensor
from groundup.tokenizer.chat import CHAT_TEMPLATE_FILE

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Config(TaskSettings):
    """Evaluate a model dir on local task files: perplexity, multiple choice, generation, code; tokenizers too."""

    model: Path | None = None
    """Model dir to evaluate (None: only tokenizer metrics)."""
    tasks: list[str] | str = field(default_factory=list)
    """Task files or folders (JSONL, MMLU CSV or folder, .txt, a token shard's .bin), a list or comma-separated;
    `name=path` names one."""
    out: Path = Path("runs/eval")
    """Output dir: results.json, samples.jsonl, manifest.json."""
    device: str = "cpu"
    """'cpu', 'cuda', 'cuda:N' or 'auto'."""
    tokenizers: list[Path] = field(default_factory=list)
    """Tokenizer files or dirs to compare (fertility, bytes per token, continued words, parity)."""
    tokenizer_texts: list[Path] = field(default_factory=list)
    """Texts (.txt lines or .jsonl documents) the tokenizers are measured on."""
    parallel: list[Path] = field(default_factory=list)
    """Two line-aligned files, one sentence per line in two languages, for tokenizer parity."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """A judge model for generation tasks (OpenAI-compatible URL)."""
    against: Path | None = None
    """Pairwise judging: the samples.jsonl of another evaluation on the same generation tasks."""
    progress: bool = True
    """Show progress bars."""
    overwrite: bool = False
    """Write into a non-empty `out` that is not an earlier evaluation (results.json, samples.jsonl and
    manifest.json are replaced, nothing else is removed; `out` may never hold or lie inside an input)."""
    def settings(self) -> TaskSettings:
        return TaskSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TaskSettings)})


def model_info(model_dir: Path, model) -> dict[str, Any]:
    manifest = model_dir / "manifest.json"
    return {"path": str(model_dir), "name": model.config.name,
            "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None,
            "weights_sha256": _sha256(model_dir / "model.safetensors"),
            "parameters": sum(p.numel() for p in model.parameters()), "config": dataclasses.asdict(model.config)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A plain table of every numeric metric with its standard error."""
    rows = [("task", "metric", "value", "stderr", "n")]
    for task, metrics in results.items():
        for metric, value in metrics.items():
            if metric.endswith("_stderr") or metric in ("n",) or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(metric + "_stderr")
            rows.append((task, metric, f"{value:.4f}" if isinstance(value, float) else str(value),
                         f"±{stderr:.4f}" if isinstance(stderr, float) and math.isfinite(stderr) else "",
                         str(metrics.get("n", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    signatures = {f"{m}": v for ms in results.values() for m, v in ms.items() if m.endswith("_signature")}
    lines += [f"{k}: {v}" for k, v in signatures.items()]
    return "\n".join(lines)


def _judge(cfg: Config, samples: list[dict], results: dict[str, dict[str, Any]]) -> None:
    judge = Judge(cfg.judge)
    others = {}
    if cfg.judge.mode == "pairwise":
        if cfg.against is None:
            raise ValueError("pairwise judging needs `against`: the samples.jsonl of the other model")
        stats = JsonlStats()
        for _, s in read_jsonl(cfg.against, stats=stats, strict=True):
            if "prediction" in s and isinstance(s["prediction"], str):
                others[(s["task"], s["index"])] = s["prediction"]
        stats.warn(log)
    by_task: dict[str, list[float]] = {}
    for s in samples:
        if not isinstance(s.get("prediction"), str) or "references" not in s:
            continue
        reference = s["references"][0] if s["references"] else None
        if cfg.judge.mode == "score":
            rating, text = judge.score(s["prompt"], s["prediction"], reference)
            s["judge"] = {"rating": rating, "text": text}
            if rating is not None:
                by_task.setdefault(s["task"], []).append(rating)
        else:
            other = others.get((s["task"], s["index"]))
            if other is None:
                raise ValueError(f"{cfg.against}: no answer for task {s['task']} item {s['index']}")
            verdict, texts = judge.compare(s["prompt"], s["prediction"], other, reference)
            s["judge"] = {"verdict": verdict, "texts": texts}
            by_task.setdefault(s["task"], []).append({"A": 1.0, "B": 0.0, "tie": 0.5}[verdict])
    from groundup.evaluate.multiple_choice import mean_stderr

    key = "judge_rating" if cfg.judge.mode == "score" else "judge_win_rate"
    for task, values in by_task.items():
        results[task][key] = sum(values) / len(values)
        results[task][key + "_stderr"] = mean_stderr(values)


def inputs_of(cfg: Config) -> list[str | Path | None]:
    """Every path the evaluation reads (a task given as ``name=path`` counts both ways)."""
    specs = [str(s) for s in split_specs(cfg.tasks) if str(s).split("=", 1)[-1] != NEEDLE_TASK]  # no file
    return [cfg.model, cfg.against, *specs, *(s.split("=", 1)[-1] for s in specs), *cfg.tokenizers,
            *cfg.tokenizer_texts, *cfg.parallel]


def run(cfg: Config) -> Path:
    out = Path(cfg.out)
    prepare_out(out, stage="evaluate", inputs=inputs_of(cfg), overwrite=cfg.overwrite,
                unfinished=("results.json", "samples.jsonl", ".*.tmp"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    samples: list[dict] = []
    task_files: dict[str, dict[str, Any]] = {}
    model_meta = None
    if cfg.tasks:
        if cfg.model is None:
            raise ValueError("tasks given but no model: set --model to a model dir")
        tasks = load_tasks(split_specs(cfg.tasks))  # every file is read and checked before the model runs
        model, tokenizer = load_model_dir(cfg.model, device=cfg.device)
        device = first_tensor(model).device
        model_meta = model_info(Path(cfg.model), model)
        template_file = Path(cfg.model) / CHAT_TEMPLATE_FILE
        chat_template = template_file.read_text(encoding="utf-8") if template_file.is_file() else None
        for task in tasks:
            log.info("task %s: %d items (%s)", task.name, len(task.items), task.kind)
            scores, task_samples = evaluate_task(model, tokenizer, task, cfg.settings(), device=device,
                                                 progress=cfg.progress, chat_template=chat_template)
            results.update(scores)
            samples.extend(task_samples)
            task_files[task.name] = {"kind": task.kind, "file": str(task.files[0]) if task.files else None,
                                     "files": [str(f) for f in task.files], "sha256": task.sha256()}
        if cfg.judge.url:
            _judge(cfg, samples, results)
        core = core_score(results)
        if core is not None and core["n"] > 1:
            results["CORE"] = core
    if cfg.tokenizers:
        from groundup.evaluate.tokenizer_eval import tokenizer_metrics

        results.update(tokenizer_metrics(cfg.tokenizers, cfg.tokenizer_texts, cfg.parallel))
    if not results:
        raise ValueError("nothing to evaluate: give --tasks (with --model) or --tokenizers")

    config_dict = configlib.to_dict(cfg)
    write_json(out / "results.json", {"results": results, "config": config_dict, "model": model_meta,
                                      "tasks": task_files, "seconds": round(time.perf_counter() - started, 2)})
    tmp = out / f".samples.jsonl.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    os.replace(tmp, out / "samples.jsonl")
    inputs = {"model": cfg.model} if cfg.model else {}
    write_manifest(out, stage="evaluate", config=config_dict, inputs=inputs)
    print(format_table(results), file=sys.stdout, flush=True)
    return out
