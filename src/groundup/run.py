"""``groundup run``: every stage of a recipe in order, the main job of the package.

With no argument it runs the built-in ``tiny`` recipe on the embedded corpus: train a
tokenizer, tokenize, pretrain within a wall-clock budget, score the held-out text in bits
per byte next to ``gzip -9`` and ``xz -9e`` on the same bytes, and write a few samples, a
loss curve and ``summary.json``. Stages whose output is up to date are skipped; an
interrupted pretraining resumes from its newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import lzma
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from groundup import config as configlib
from groundup.artifacts import JsonlStats, prepare_out, read_json, read_jsonl, read_manifest, write_json
from groundup.corpus import STDLIB, split_documents
from groundup.infer.sampling import SamplingParams
from groundup.model.io import resolve_device
from groundup.tokenizer import run as tokenizer_stage
from groundup.tokens import tokenize as tokenize_stage
from groundup.train import pretrain as pretrain_stage

log = logging.getLogger(__name__)


def recipe_path(recipe: str) -> Path:
    """A built-in recipe's YAML (by name) or the given file."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"recipe not found: {path}")
        return path
    builtin = resources.files("groundup") / "recipes" / f"{recipe}.yaml"
    if not builtin.is_file():
        known = sorted(p.name.removesuffix(".yaml") for p in (resources.files("groundup") / "recipes").iterdir()
                       if p.name.endswith(".yaml"))
        raise FileNotFoundError(f"unknown recipe {recipe!r}: give a YAML file or one of {', '.join(known)}")
    return Path(str(builtin))


@dataclass(kw_only=True)
class SamplesConfig:
    """Text generated from the trained model at the end of a run."""

    prompts: list[str] = field(default_factory=lambda: ["def ", "import os\n", "class ", '"""'])
    """Prompts to continue."""
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=96, temperature=0.7,
                                                                            top_k=50, seed=0))
    """How to sample."""


@dataclass(kw_only=True)
class Config:
    """Run every stage of a recipe in order: tokenizer, tokenize, pretrain, held-out scoring, samples."""

    recipe: str = field(default="tiny", metadata=configlib.positional(metavar="RECIPE", loads=recipe_path))
    """A built-in recipe name (tiny, gpt2-124m) or a YAML file; its keys are applied where it stands on the
    command line, so the flags after it override them (`groundup run [RECIPE] [--key value ...]`)."""
    out: Path | None = None
    """The run directory (default: runs/<recipe name>)."""
    max_minutes: float | None = None
    """Wall-clock budget of pretraining (overrides the recipe's pretrain.train.max_minutes)."""
    data: str = STDLIB
    """Text to train on: 'stdlib' (the embedded corpus) or a file or folder of text shards."""
    val_fraction: float = 0.05
    """Share of documents (chosen by a hash of their id) held out from every stage for scoring."""
    tokenizer: tokenizer_stage.Config = field(default_factory=tokenizer_stage.Config)
    """Tokenizer stage settings (its data, out and val_fraction are set by the run)."""
    tokenize: tokenize_stage.Config = field(default_factory=tokenize_stage.Config)
    """Tokenize stage settings (its data, tokenizer, out and val_fraction are set by the run)."""
    pretrain: pretrain_stage.Config = field(default_factory=pretrain_stage.Config)
    """Pretrain stage settings (its tokens and out are set by the run)."""
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    """Samples written at the end."""
    overwrite: bool = False
    """Write into a non-empty `out` that is not an earlier run (entries with a run dir's names are replaced,
    nothing else is removed; `out` may never hold or lie inside `data`)."""


RUN_DIR_NAMES = ("recipe.yaml", "tokenizer", "tokens", "model", "samples.jsonl", "loss.png", "summary.json",
                 "report.html", ".*.tmp")
"""What ``groundup run`` writes into its run dir (which has no manifest of its own)."""


# ---------------------------------------------------------------------------- pure helpers


def compressor_bits_per_byte(data: bytes) -> dict[str, float]:
    """Bits per byte of ``gzip -9`` and ``xz -9e`` (the same DEFLATE and LZMA2 settings) on ``data``."""
    if not data:
        raise ValueError("no held-out bytes to compress")
    n = len(data)
    return {
        "gzip_bits_per_byte": 8 * len(gzip.compress(data, compresslevel=9, mtime=0)) / n,
        "xz_bits_per_byte": 8 * len(lzma.compress(data, format=lzma.FORMAT_XZ,
                                                  preset=9 | lzma.PRESET_EXTREME)) / n,
    }


def held_out_bytes(data: str, val_fraction: float) -> bytes:
    """The held-out documents' UTF-8 bytes, concatenated in corpus order (what the model is scored on)."""
    _, val = split_documents(data, val_fraction=val_fraction)
    return b"".join(doc.text.encode("utf-8") for doc in val)


def is_up_to_date(out: Path, stage_config: dict) -> bool:
    """A stage dir is up to date when its manifest records the same config."""
    try:
        return read_manifest(out).get("config") == stage_config
    except (FileNotFoundError, ValueError):
        return False


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``; bad lines (a torn last one) are skipped, counted and logged."""
    stats = JsonlStats()
    records = [record for _, record in read_jsonl(path, stats=stats)]
    stats.warn(log)
    return records


def plot_loss_curve(metrics: list[dict], path: Path, *, baselines: dict[str, float] | None = None,
                    final: tuple[float, float] | None = None) -> Path:
    """Training loss and held-out bits per byte against tokens seen, with the compressors' lines.

    The periodic evaluations score a fixed sample of held-out windows; ``final`` (tokens seen, bits per
    byte) is the score of the whole held-out text with overlapping windows, drawn as its own point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [m for m in metrics if "loss" in m and "event" not in m]
    evals = [m for m in metrics if "val_loss" in m]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot([m["tokens"] / 1e6 for m in train], [m["loss"] for m in train], lw=1.2, label="train")
    if evals:
        ax1.plot([m["tokens"] / 1e6 for m in evals], [m["val_loss"] for m in evals], "o-", ms=3, label="held-out")
    ax1.set(title="Loss", xlabel="tokens seen (millions)", ylabel="cross-entropy (nats/token)")
    ax1.grid(alpha=0.3)
    ax1.legend()
    bpb = [m for m in evals if "val_bits_per_byte" in m]
    ax2.plot([m["tokens"] / 1e6 for m in bpb], [m["val_bits_per_byte"] for m in bpb], "o-", ms=3,
             label="model, sample of held-out windows")
    if final is not None:
        ax2.plot([final[0] / 1e6], [final[1]], "*", ms=12, color="C3", label=f"model, all held-out text: {final[1]:.3f}")
    for (name, value), style in zip((baselines or {}).items(), ("--", ":"), strict=False):
        ax2.axhline(value, ls=style, color="gray", label=name.replace("_bits_per_byte", " -9" + ("e" if "xz" in name else "")))
    ax2.set(title="Held-out bits per byte", xlabel="tokens seen (millions)", ylabel="bits per byte")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- the run


def run_dir(cfg: Config) -> Path:
    """The run dir, created once :func:`groundup.artifacts.prepare_out` allows it (an earlier run's is resumed)."""
    out = Path(cfg.out or Path("runs") / Path(cfg.recipe).stem)
    prepare_out(out, stage="run", inputs=[None if cfg.data == STDLIB else cfg.data], overwrite=cfg.overwrite,
                unfinished=RUN_DIR_NAMES)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run(cfg: Config) -> Path:
    out = run_dir(cfg)
    timings: dict[str, float] = {}
    tokenizer_cfg = dataclasses.replace(cfg.tokenizer, data=cfg.data, out=out / "tokenizer",
                                        val_fraction=cfg.val_fraction)
    tokenize_cfg = dataclasses.replace(cfg.tokenize, data=cfg.data, tokenizer=out / "tokenizer", out=out / "tokens",
                                       val_fraction=cfg.val_fraction)
    train_loop_cfg = cfg.pretrain.train
    if cfg.max_minutes is not None:
        train_loop_cfg = dataclasses.replace(train_loop_cfg, max_minutes=cfg.max_minutes)
    pretrain_cfg = dataclasses.replace(cfg.pretrain, tokens=out / "tokens", out=out / "model",
                                       tokenizer=out / "tokenizer", train=train_loop_cfg)
    if pretrain_cfg.log.report_every and pretrain_cfg.log.report_dir is None:  # refresh the whole run's page
        pretrain_cfg = dataclasses.replace(pretrain_cfg, log=dataclasses.replace(pretrain_cfg.log, report_dir=out))
    # An unchanged recipe continues an interrupted pretraining; a changed one starts it afresh.
    previous, resolved = out / "recipe.yaml", dataclasses.replace(cfg, out=out)
    same_recipe = previous.is_file() and configlib.load(Config, previous) == resolved
    configlib.save(resolved, previous)
    if same_recipe:
        pretrain_cfg = dataclasses.replace(pretrain_cfg, train=dataclasses.replace(pretrain_cfg.train, resume="auto"))

    for name, module, stage_cfg in (("tokenizer", tokenizer_stage, tokenizer_cfg),
                                    ("tokenize", tokenize_stage, tokenize_cfg)):
        t0 = time.perf_counter()
        if is_up_to_date(stage_cfg.out, configlib.to_dict(stage_cfg)):
            log.info("%s: up to date in %s, skipped", name, stage_cfg.out)
        else:
            log.info("%s: running", name)
            module.run(stage_cfg)
        timings[f"{name}_seconds"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    log.info("pretrain: running (%s)", f"budget {train_loop_cfg.max_minutes} min" if train_loop_cfg.max_minutes
             else f"{train_loop_cfg.max_steps} steps")
    model_dir = pretrain_stage.run(pretrain_cfg)
    timings["pretrain_seconds"] = round(time.perf_counter() - t0, 2)
    result = read_manifest(model_dir)["result"]

    t0 = time.perf_counter()
    baselines = compressor_bits_per_byte(held_out_bytes(cfg.data, cfg.val_fraction))
    timings["compress_seconds"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    samples = write_samples(model_dir, cfg.samples, out / "samples.jsonl")
    timings["samples_seconds"] = round(time.perf_counter() - t0, 2)

    metrics = read_metrics(model_dir / "metrics.jsonl")
    throughput = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
    mfu = [m["mfu"] for m in metrics if "mfu" in m]
    plot_loss_curve(metrics, out / "loss.png", baselines=baselines,
                    final=(result["tokens_seen"], result["held_out_bits_per_byte"]))
    tokens_meta = read_json(out / "tokens" / "meta.json")
    summary = {
        "recipe": cfg.recipe,
        "held_out_bits_per_byte": result["held_out_bits_per_byte"],
        **baselines,
        "beats_gzip": result["held_out_bits_per_byte"] < baselines["gzip_bits_per_byte"],
        "beats_xz": result["held_out_bits_per_byte"] < baselines["xz_bits_per_byte"],
        "held_out_loss": result["held_out_loss"],
        "train_seconds": result["train_seconds"],
        "tokens_seen": result["tokens_seen"],
        "steps": result["steps"],
        "stopped_by": result["stopped_by"],
        "parameters": result["parameters"],
        "tokens_per_s_median": statistics.median(throughput) if throughput else None,
        "mfu_median": statistics.median(mfu) if mfu else None,
        "train_tokens": tokens_meta.get("tokens", {}).get("train"),
        "held_out_tokens": result["held_out_tokens"],
        "held_out_bytes": tokens_meta.get("bytes", {}).get("val"),
        "timings": timings,
        "hardware": hardware_info(resolve_device(pretrain_cfg.device), result.get("peak_flops")),
        "samples": samples,
        "model_dir": str(model_dir),
    }
    write_json(out / "summary.json", summary)
    write_report(out)
    print_summary(summary, out, stream=sys.stdout)
    return out


def write_report(out: Path) -> Path | None:
    """The run's HTML report; a failure to draw it is logged, never the end of a finished run."""
    from groundup.report import run as report_stage

    try:
        return report_stage.run(report_stage.Config(runs=[out]))
    except Exception:  # noqa: BLE001 (the run's results are already written)
        log.exception("could not write the report of %s", out)
        return None


def hardware_info(device, peak_flops: float | None) -> dict:
    """What the run ran on, for the report: OS, CPU, accelerator, library versions."""
    import os
    import platform

    import torch

    from groundup.probe.machine import cpu_name

    info = {"platform": platform.platform(), "cpu": cpu_name(), "cpu_cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["accelerator"] = torch.cuda.get_device_name(device)
        info["accelerators"] = torch.cuda.device_count()
    if peak_flops:
        info["peak_tflops_for_mfu"] = round(peak_flops / 1e12, 3)
    return info


def write_samples(model_dir: Path, cfg: SamplesConfig, path: Path) -> list[dict]:
    from groundup.infer.generate import generate
    from groundup.model.io import load_model_dir

    model, tokenizer = load_model_dir(model_dir)
    samples = []
    for prompt in cfg.prompts:
        result = generate(model, tokenizer, prompt, cfg.sampling)
        samples.append({"prompt": prompt, "completion": result.text})
    with open(path, "w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample) + "\n")
    return samples


def print_summary(summary: dict, out: Path, stream) -> None:
    lines = [
        "",
        f"run: {out}",
        f"  held-out bits per byte  {summary['held_out_bits_per_byte']:.4f}  (model)",
        f"                          {summary['gzip_bits_per_byte']:.4f}  (gzip -9)",
        f"                          {summary['xz_bits_per_byte']:.4f}  (xz -9e)",
        f"  trained {summary['train_seconds']:.0f} s, {summary['tokens_seen']:,} tokens, {summary['steps']} steps"
        + (f", {summary['tokens_per_s_median']:,.0f} tokens/s" if summary["tokens_per_s_median"] else ""),
        "",
    ]
    for sample in summary["samples"][:2]:
        lines += [f"--- {sample['prompt']!r}", sample["prompt"] + sample["completion"], ""]
    lines.append(f"summary: {out / 'summary.json'}, loss curve: {out / 'loss.png'}, model: {out / 'model'}")
    if (out / "report.html").is_file():
        lines.append(f"report: {out / 'report.html'}")
    print("\n".join(lines), file=stream)
