"""Find what a run directory holds: every stage's output, recognized by its own files.

A run dir is whatever `groundup run` leaves (``tokenizer/``, ``tokens/``, ``model/``, ``summary.json``,
...), a single stage's output (a model dir, a curate dir), or a folder of them. Each directory is
recognized by its manifest's ``stage`` and by the files the stage contract names, so outputs of
stages added later (fine-tuning, evaluation) are found wherever they were written. Nothing here
raises on a half-written or missing file: a report must still render for a run that is in progress
or was killed; what could not be read is listed in ``problems``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from groundup.artifacts import JsonlStats, read_jsonl
from groundup.report.metrics import Metrics, load_metrics

SKIP_DIRS = {"checkpoints", "tensorboard", "shards", "work", "dropped", "jsonl", "__pycache__"}
"""Folders that hold no stage output worth descending into (bulk data, checkpoints, event files)."""
MAX_DEPTH = 3


@dataclass
class Checkpoint:
    path: Path
    step: int | None
    tokens: int | None
    bytes: int


@dataclass
class ModelDir:
    """A training stage's output: metrics, manifest (absent while training runs), checkpoints."""

    path: Path
    stage: str
    manifest: dict | None
    train_config: dict | None
    metrics_path: Path
    weights_bytes: int | None
    checkpoints: list[Checkpoint]
    metrics: Metrics | None = None
    telemetry: Metrics | None = None
    """The hardware samples of telemetry.jsonl (``--log.telemetry_every``), if the run wrote them."""

    @property
    def result(self) -> dict:
        return (self.manifest or {}).get("result") or {}

    @property
    def finished(self) -> bool:
        return self.manifest is not None


@dataclass
class Run:
    path: Path
    label: str = ""
    summary: dict | None = None
    recipe_text: str | None = None
    recipe: dict | None = None
    manifests: dict[Path, dict] = field(default_factory=dict)
    curate: list[tuple[Path, dict]] = field(default_factory=list)
    tokenizer: tuple[Path, dict] | None = None
    vocab_lengths: list[int] | None = None
    tokens_meta: tuple[Path, dict] | None = None
    pretrain: list[ModelDir] = field(default_factory=list)
    finetune: list[ModelDir] = field(default_factory=list)
    evals: list[tuple[Path, dict]] = field(default_factory=list)
    samples: list[tuple[Path, list[dict]]] = field(default_factory=list)
    probes: list[tuple[Path, dict]] = field(default_factory=list)
    """probe.json files (`groundup probe`) found in the run dir."""
    traces: list[tuple[Path, list[dict]]] = field(default_factory=list)
    """trace.jsonl files (`groundup agent`, groundup.apps): one record per model call and tool call."""
    problems: list[str] = field(default_factory=list)

    def rel(self, path: Path) -> str:
        try:
            rel = path.relative_to(self.path)
            return str(rel) if str(rel) != "." else self.path.name
        except ValueError:
            return str(path)


def _read_json(path: Path, problems: list[str]) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"{path}: unreadable ({e})")
        return None


def _read_yaml(path: Path, problems: list[str]) -> tuple[str | None, dict | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"{path}: unreadable ({e})")
        return None, None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        problems.append(f"{path}: malformed YAML ({e})")
        data = None
    return text, data if isinstance(data, dict) else None


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _checkpoints(path: Path, problems: list[str]) -> list[Checkpoint]:
    root = path / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in sorted(root.iterdir()):
        if not d.is_dir() or not d.name.startswith("step-"):
            continue
        state = _read_json(d / "state.json", problems) or {}
        found.append(Checkpoint(path=d, step=state.get("step"), tokens=state.get("tokens_seen"),
                                bytes=_dir_bytes(d)))
    return found


def _records(path: Path, problems: list[str], keep: Callable[[dict], bool], limit: int) -> list[dict]:
    """The first ``limit`` records of a JSONL file that ``keep`` accepts; what is unreadable goes to ``problems``."""
    out: list[dict] = []
    stats = JsonlStats()
    try:
        for _, record in read_jsonl(path, stats=stats):
            if keep(record):
                out.append(record)
                if len(out) >= limit:
                    break
    except OSError as e:
        problems.append(f"{path}: unreadable ({e})")
    problems.extend(f"{example}, skipped" for example in stats.examples)
    if stats.skipped > len(stats.examples):
        problems.append(f"{path}: {stats.skipped - len(stats.examples)} more bad lines skipped")
    return out


def _samples(path: Path, problems: list[str], limit: int = 50) -> list[dict]:
    """Prompt/completion pairs of a ``samples.jsonl`` (other shapes, e.g. evaluation samples, are left out)."""
    return _records(path, problems, lambda r: "prompt" in r and "completion" in r, limit)


def _trace(path: Path, problems: list[str], limit: int = 20_000) -> list[dict]:
    """The model and tool calls of an application's ``trace.jsonl`` (the first ``limit``)."""
    return _records(path, problems, lambda r: r.get("kind") in ("model", "tool")
                    and isinstance(r.get("latency_s"), (int, float)), limit)


def vocab_token_lengths(tokenizer_json: Path) -> list[int] | None:
    """Byte length of every (non-special) vocabulary entry of a byte-level BPE: one character per byte."""
    try:
        with open(tokenizer_json, encoding="utf-8") as f:
            spec = json.load(f)
        vocab = spec["model"]["vocab"]
        special = {t.get("content") for t in spec.get("added_tokens", [])}
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None
    if not isinstance(vocab, dict):
        return None
    return [len(token) for token in vocab if token not in special]


def _model_dir(path: Path, manifest: dict | None, problems: list[str]) -> ModelDir:
    stage = (manifest or {}).get("stage")
    _, train_config = _read_yaml(path / "train.yaml", problems)
    if stage is None:  # still training (the manifest is written last): guess from the config
        stage = "pretrain" if train_config is None or "tokens" in train_config else "finetune"
    weights = path / "model.safetensors"
    return ModelDir(path=path, stage=stage, manifest=manifest, train_config=train_config,
                    metrics_path=path / "metrics.jsonl",
                    weights_bytes=weights.stat().st_size if weights.is_file() else None,
                    checkpoints=_checkpoints(path, problems))


def _walk(root: Path, depth: int = 0):
    yield root
    if depth >= MAX_DEPTH:
        return
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return
    for child in children:
        if child.name in SKIP_DIRS or child.name.startswith("."):
            continue
        yield from _walk(child, depth + 1)


def collect(path: str | Path, *, max_points: int = 2000, label: str | None = None) -> Run:
    """Everything the report draws from one run dir; metrics are loaded downsampled."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"run dir not found: {root} is not a directory")
    run = Run(path=root, label=label or root.resolve().name)
    problems = run.problems
    run.summary = _read_json(root / "summary.json", problems)
    run.recipe_text, run.recipe = _read_yaml(root / "recipe.yaml", problems)
    for d in _walk(root):
        manifest = _read_json(d / "manifest.json", problems) if (d / "manifest.json").is_file() else None
        if isinstance(manifest, dict):
            run.manifests[d] = manifest
        else:
            manifest = None
        stage = (manifest or {}).get("stage")
        if (d / "metrics.jsonl").is_file():
            model = _model_dir(d, manifest, problems)
            (run.pretrain if model.stage == "pretrain" else run.finetune).append(model)
        if stage == "curate" or (stage is None and (d / "stats.json").is_file() and (d / "shards").is_dir()):
            stats = _read_json(d / "stats.json", problems)
            if isinstance(stats, dict):
                run.curate.append((d, stats))
        if stage == "tokenizer" and run.tokenizer is None:
            stats = _read_json(d / "stats.json", problems)
            if isinstance(stats, dict):
                run.tokenizer = (d, stats)
                run.vocab_lengths = vocab_token_lengths(d / "tokenizer.json")
        if stage == "tokenize" and run.tokens_meta is None:
            meta = _read_json(d / "meta.json", problems)
            if isinstance(meta, dict):
                run.tokens_meta = (d, meta)
        if (d / "results.json").is_file():
            results = _read_json(d / "results.json", problems)
            if isinstance(results, dict) and isinstance(results.get("results"), dict):
                run.evals.append((d, results))
        if (d / "probe.json").is_file():
            probe = _read_json(d / "probe.json", problems)
            if isinstance(probe, dict) and probe.get("stage") == "probe":
                run.probes.append((d / "probe.json", probe))
        if (d / "trace.jsonl").is_file():
            trace = _trace(d / "trace.jsonl", problems)
            if trace:
                run.traces.append((d / "trace.jsonl", trace))
        if (d / "samples.jsonl").is_file():
            samples = _samples(d / "samples.jsonl", problems)
            if samples:
                run.samples.append((d, samples))
    for model in run.pretrain + run.finetune:
        model.metrics = _load(model.metrics_path, max_points, problems)
        telemetry = model.path / "telemetry.jsonl"
        if telemetry.is_file():
            model.telemetry = _load(telemetry, max_points, problems)
    return run


def _load(path: Path, max_points: int, problems: list[str]) -> Metrics | None:
    """A metrics-shaped file's series; what could not be read goes to ``problems``."""
    try:
        metrics = load_metrics(path, max_points=max_points)
    except OSError as e:
        problems.append(f"{path}: unreadable ({e})")
        return None
    problems.extend(metrics.bad_examples)
    return metrics


def label_runs(runs: list[Run]) -> None:
    """Short distinct labels: the dir names, or the last two path parts where names collide."""
    names = [r.path.resolve().name for r in runs]
    for run, name in zip(runs, names, strict=True):
        if names.count(name) > 1:
            parts = run.path.resolve().parts
            name = "/".join(parts[-2:])
        run.label = name
