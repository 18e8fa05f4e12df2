"""A tiny real run (`groundup run` at a tiny size, TensorBoard on) and the outputs of the other stages beside it.

Curation is run for real on generated documents; fine-tuning (DPO) and evaluation outputs are
written in their contract layouts (metrics.jsonl keys, results.json), as those stages write them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from groundup import cli

TINY_RUN = [
    "--tokenizer.vocab_size", "320",
    "--pretrain.model.n_layer", "1", "--pretrain.model.n_embd", "32", "--pretrain.model.n_head", "2",
    "--pretrain.model.n_kv_head", "2", "--pretrain.model.intermediate_size", "64",
    "--pretrain.model.block_size", "64", "--pretrain.seq_len", "64", "--pretrain.batch_size", "4",
    "--pretrain.train.max_steps", "30", "--pretrain.train.max_minutes", "null",
    "--pretrain.train.schedule_clock", "steps", "--pretrain.train.log_every", "2",
    "--pretrain.train.eval_every", "10", "--pretrain.train.checkpoint_every", "15",
    "--pretrain.train.progress_bar", "false", "--pretrain.optim.warmup_steps", "4",
    "--pretrain.eval_windows", "4", "--samples.sampling.max_new_tokens", "8",
    "--pretrain.final_eval_stride", "64", "--val_fraction", "0.2", "--pretrain.log.tensorboard", "true",
]

WORDS = (
    "the", "river", "garden", "teacher", "window", "market", "station", "engine", "village", "library",
    "doctor", "winter", "mountain", "letter", "kitchen", "bridge", "forest", "harbor", "quiet",
    "bright", "ancient", "narrow", "gentle", "heavy", "simple", "careful", "carries", "finds", "builds",
    "watches", "follows", "opens", "paints", "remembers", "crosses", "visits", "and", "of", "to", "a",
    "in", "that", "it", "was", "with", "for", "on",
)


def prose(seed: int, sentences: int = 14) -> str:
    rng = random.Random(seed)
    out = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))).capitalize() + "." for _ in range(sentences)]
    return "\n".join(" ".join(out[i:i + 3]) for i in range(0, sentences, 3))


def write_curate_input(folder: Path) -> Path:
    """Prose, exact duplicates of some of it, and repetitive spam: something for every step to do."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as f:
        for i in range(40):
            f.write(json.dumps({"text": prose(i), "url": f"https://example.org/{i}"}) + "\n")
        for i in range(6):
            f.write(json.dumps({"text": prose(i), "url": f"https://copy.example.org/{i}"}) + "\n")
        for i in range(5):
            f.write(json.dumps({"text": "buy now " * 3, "url": f"https://spam.example.org/{i}"}) + "\n")
    return folder


def write_dpo_dir(out: Path, steps: int = 30) -> Path:
    """A DPO output's metrics (the fine-tuning contract's keys) and manifest."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.jsonl", "w", encoding="utf-8") as f:
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, "tokens": s * 256, "loss": 0.69 - 0.01 * s, "lr": 1e-5,
                                "grad_norm": 1.0 / s, "reward_margin": 0.05 * s, "reward_chosen": 0.03 * s,
                                "reward_rejected": -0.02 * s, "preference_accuracy": min(1.0, 0.5 + 0.015 * s),
                                "elapsed_s": 0.5 * s}) + "\n")
            if s % 10 == 0:
                f.write(json.dumps({"step": s, "tokens": s * 256, "val_loss": 0.7 - 0.01 * s,
                                    "val_preference_accuracy": 0.5 + 0.01 * s}) + "\n")
    (out / "train.yaml").write_text("method: dpo\nbeta: 0.1\n")
    (out / "manifest.json").write_text(json.dumps({"stage": "dpo", "config": {}, "result": {"train_seconds": 15.0,
                                                                                          "steps": steps}}))
    return out


def write_eval_dir(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "results": {
            "hellaswag": {"acc": 0.262, "acc_stderr": 0.0044, "acc_norm": 0.27, "acc_norm_stderr": 0.0044, "n": 10042},
            "arc_easy": {"acc": 0.41, "acc_stderr": 0.01, "acc_norm": 0.38, "acc_norm_stderr": 0.01, "n": 2376},
            "wikitext": {"bits_per_byte": 1.9, "n": 62},
        },
        "config": {"tasks": ["hellaswag", "arc_easy", "wikitext"]},
        "model": {"path": "model", "parameters": 1000},
        "tasks": {"hellaswag": {"file": "hellaswag.jsonl", "sha256": "0" * 64}},
    }
    (out / "results.json").write_text(json.dumps(results))
    (out / "manifest.json").write_text(json.dumps({"stage": "evaluate", "config": {}}))
    return out


@pytest.fixture(scope="session")
def tiny_run(spine_corpus, tmp_path_factory) -> Path:
    """`groundup run` at a tiny size: tokenizer, tokens, model (with TensorBoard events), samples, report."""
    out = tmp_path_factory.mktemp("report") / "tiny"
    assert cli.main(["run", "tiny", "--out", str(out), "--data", str(spine_corpus), *TINY_RUN]) == 0
    return out


@pytest.fixture(scope="session")
def full_run(tiny_run, tmp_path_factory) -> Path:
    """The tiny run plus a real curate output, a DPO output and evaluation results: every section has data."""
    import shutil

    from groundup.curate import run as curate

    out = tmp_path_factory.mktemp("report") / "full"
    shutil.copytree(tiny_run, out)
    source = write_curate_input(tmp_path_factory.mktemp("curate_input"))
    curate.run(curate.Config(input=[str(source)], out=out / "data", workers=1))
    write_dpo_dir(out / "dpo")
    write_eval_dir(out / "eval")
    return out
