"""`groundup run`: the whole chain at a tiny size, reruns, bad input, and the command line."""

from __future__ import annotations

import json
import os

import pytest

from groundup import cli
from groundup import config as configlib
from groundup import run as pipeline
from groundup.model.io import load_model_dir

TINY = [
    "--tokenizer.vocab_size", "320",
    "--pretrain.model.n_layer", "1", "--pretrain.model.n_embd", "32", "--pretrain.model.n_head", "2",
    "--pretrain.model.n_kv_head", "2", "--pretrain.model.intermediate_size", "64",
    "--pretrain.model.block_size", "64", "--pretrain.seq_len", "64", "--pretrain.batch_size", "4",
    "--pretrain.train.max_steps", "12", "--pretrain.train.schedule_clock", "steps",
    "--pretrain.train.eval_every", "6", "--pretrain.train.checkpoint_every", "6",
    "--pretrain.train.progress_bar", "false", "--pretrain.optim.warmup_steps", "2",
    "--pretrain.eval_windows", "4", "--samples.sampling.max_new_tokens", "8",
    "--val_fraction", "0.2", "--pretrain.compile", "false",
]


def test_the_whole_chain_at_a_tiny_size(spine_corpus, tmp_path, capsys):
    out = tmp_path / "tiny"
    assert cli.main(["run", "tiny", "--out", str(out), "--data", str(spine_corpus), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("held_out_bits_per_byte", "gzip_bits_per_byte", "xz_bits_per_byte", "train_seconds",
                "tokens_seen"):
        assert isinstance(summary[key], (int, float)) and summary[key] > 0, key
    assert summary["tokens_seen"] == 12 * 4 * 64 and summary["steps"] == 12
    assert summary["xz_bits_per_byte"] < summary["gzip_bits_per_byte"] < 8
    assert (out / "loss.png").stat().st_size > 10_000
    assert (out / "recipe.yaml").is_file()
    for stage in ("tokenizer", "tokens", "model"):
        assert (out / stage / "manifest.json").is_file(), stage
    model, tokenizer = load_model_dir(out / "model")
    assert model.config.n_embd == 32 and tokenizer.vocab_size == 320
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(s["completion"] for s in samples)
    printed = capsys.readouterr().out
    assert "gzip -9" in printed and "xz -9e" in printed

    # A second run with the same recipe skips the tokenizer and tokenize stages and resumes pretraining
    # from its last checkpoint (already complete: no further steps).
    tokenizer_mtime = os.stat(out / "tokenizer" / "tokenizer.json").st_mtime_ns
    assert cli.main(["run", "tiny", "--out", str(out), "--data", str(spine_corpus), *TINY]) == 0
    assert os.stat(out / "tokenizer" / "tokenizer.json").st_mtime_ns == tokenizer_mtime
    again = json.loads((out / "summary.json").read_text())
    assert again["steps"] == 12 and again["timings"]["tokenizer_seconds"] < summary["timings"]["tokenizer_seconds"]


def test_compressor_baselines_are_real():
    text = ("def f(x):\n    return x + 1\n" * 200).encode()
    rates = pipeline.compressor_bits_per_byte(text)
    assert rates["xz_bits_per_byte"] < 0.5 and rates["gzip_bits_per_byte"] < 0.5
    noise = os.urandom(20_000)
    assert pipeline.compressor_bits_per_byte(noise)["gzip_bits_per_byte"] > 7.9
    with pytest.raises(ValueError, match="held-out"):
        pipeline.compressor_bits_per_byte(b"")


def test_held_out_bytes_are_the_held_out_documents(spine_corpus):
    from groundup.corpus import split_documents

    _, val = split_documents(str(spine_corpus), val_fraction=0.2)
    data = pipeline.held_out_bytes(str(spine_corpus), 0.2)
    assert val and len(data) == sum(len(d.text.encode()) for d in val)


def test_an_empty_corpus_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no text"):
        cli.main(["run", "--out", str(tmp_path / "run"), "--data", str(empty), *TINY])


def test_unknown_recipe_names_the_known_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="tiny"):
        configlib.parse(pipeline.Config, ["huge"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        configlib.parse(pipeline.Config, [str(tmp_path / "nope.yaml")])


def test_command_line_shape():
    cfg = configlib.parse(pipeline.Config, ["--out", "somewhere", "--max-minutes", "2.5"])
    assert cfg.recipe == "tiny" and str(cfg.out) == "somewhere" and cfg.max_minutes == 2.5
    # the built-in recipe is a time-budgeted run under 10 minutes
    assert cfg.pretrain.train.max_minutes is not None and cfg.pretrain.train.max_minutes < 10


@pytest.mark.parametrize("name", ["tiny", "gpt2-124m", "speedrun"])
def test_built_in_recipes_parse_into_the_config(name):
    cfg = configlib.parse(pipeline.Config, [name])
    assert cfg.recipe == name
    assert cfg.pretrain.optim.lr > 0 and cfg.tokenizer.vocab_size >= 8192


def test_the_speedrun_recipe_runs_shrunk_on_the_cpu(spine_corpus, tmp_path):
    """Every piece of the one-GPU speedrun recipe (Muon, the block switches, packed documents with
    document-causal attention, accumulation, WSD) runs end to end, at a toy size and without compile."""
    from groundup.model.transformer import count_parameters
    from groundup.plan.params import count_parameters as planned

    full = configlib.parse(pipeline.Config, ["speedrun"]).pretrain
    counts = planned(full.model)
    assert 84e6 < counts.attention + counts.mlp < 86e6  # GPT-2 small's blocks
    assert counts.value_embeddings == 6 * 50304 * 768  # lookups on every other layer: 232M of the total
    assert count_parameters(full.model) == counts.total
    assert (full.optim.optimizer, full.packing, full.doc_mask, full.compile) == ("muon", "bestfit", True, True)
    out = tmp_path / "speedrun"
    shrink = [
        "--tokenizer.vocab_size", "320", "--pretrain.model.vocab_size", "320", "--pretrain.model.n_layer", "2",
        "--pretrain.model.n_embd", "64", "--pretrain.model.n_head", "2", "--pretrain.model.n_kv_head", "2",
        "--pretrain.model.block_size", "64", "--pretrain.seq_len", "64", "--pretrain.batch_size", "2",
        "--pretrain.train.grad_accum", "2", "--pretrain.train.max_steps", "4", "--pretrain.train.max_minutes", "5",
        "--pretrain.train.eval_every", "0", "--pretrain.train.checkpoint_every", "0",
        "--pretrain.train.progress_bar", "false", "--pretrain.compile", "false", "--pretrain.eval_windows", "2",
        "--samples.sampling.max_new_tokens", "4", "--val_fraction", "0.2", "--pretrain.optim.warmup_steps", "1",
    ]
    assert cli.main(["run", "speedrun", "--out", str(out), "--data", str(spine_corpus), *shrink]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["held_out_bits_per_byte"] > 0
    model, _ = load_model_dir(out / "model")
    assert model.config.value_embeddings and model.config.qk_norm and model.config.mlp == "relu2"
