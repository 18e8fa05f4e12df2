"""Pretraining: exact resume, checkpoints that survive a crash, metrics, budgets, bad input."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from groundup.artifacts import read_manifest
from groundup.model.config import ModelConfig
from groundup.model.io import load_model_dir
from groundup.model.transformer import Transformer
from groundup.tokens.datasets import PackedDocuments, RandomWindows
from groundup.train import checkpoint as ckpt
from groundup.train import pretrain
from groundup.train.loop import LoopConfig
from groundup.train.optim import OptimConfig

MODEL = ModelConfig.from_name("tiny-llama", n_layer=2, n_embd=32, n_head=4, n_kv_head=2, vocab_size=320,
                              block_size=32, dropout=0.1)


def config(tokens, out, optimizer="adamw", **train) -> pretrain.Config:
    loop = {"max_steps": 8, "checkpoint_every": 4, "eval_every": 4, "log_every": 1, "progress_bar": False, **train}
    return pretrain.Config(tokens=tokens, out=out, model=MODEL,
                           optim=OptimConfig(lr=1e-2, warmup_steps=2, optimizer=optimizer),
                           train=LoopConfig(**loop), batch_size=4, seq_len=32, eval_windows=4, device="cpu",
                           seed=7)


def weights(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


TIMING = {"elapsed_s", "tokens_per_s", "mfu"}


def rows(run_dir) -> list[dict]:
    """metrics.jsonl's rows without the keys that measure time."""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def file_digests(run_dir) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_after_a_stop_is_bitwise_exact(spine_tokens, tmp_path, monkeypatch, optimizer):
    straight = pretrain.run(config(spine_tokens, tmp_path / "straight", optimizer))

    original = RandomWindows.next_batch

    def interrupted(self):
        if self.batches == 6:  # during step 7, after the checkpoint at step 4
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(RandomWindows, "next_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain.run(config(spine_tokens, tmp_path / "stopped", optimizer))
    assert ckpt.latest_checkpoint(tmp_path / "stopped" / "checkpoints").name == "step-000004"
    with open(tmp_path / "stopped" / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "tokens": 89')  # and the writer was killed mid-line
    monkeypatch.setattr(RandomWindows, "next_batch", original)
    resumed = pretrain.run(config(spine_tokens, tmp_path / "stopped", optimizer, resume="auto"))

    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [r["step"] for r in map(json.loads, (resumed / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, 9))  # the lines of the abandoned steps 5-6 were dropped on resume
    straight_loss = [r["loss"] for r in map(json.loads, (straight / "metrics.jsonl").read_text().splitlines())
                     if "loss" in r]
    resumed_loss = [r["loss"] for r in map(json.loads, (resumed / "metrics.jsonl").read_text().splitlines())
                    if "loss" in r]
    assert straight_loss == resumed_loss
    assert rows(resumed) == rows(straight)  # every row once, the evaluations' too, and nothing of the torn line


def test_packed_documents_with_doc_mask_resume_bitwise_and_report_their_efficiency(spine_tokens, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(pretrain, "peak_flops_for", lambda device: None)  # skips a 2 s matmul timing

    def packed(out, **train):
        cfg = config(spine_tokens, out, grad_accum=2, **train)
        cfg.packing, cfg.doc_mask, cfg.final_eval_stride = "bestfit", True, 32
        return cfg

    straight = pretrain.run(packed(tmp_path / "straight"))
    original = PackedDocuments.next_batch

    def interrupted(self):
        if self.batches == 12:  # during step 7 (two micro-batches a step), after the checkpoint at step 4
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(PackedDocuments, "next_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain.run(packed(tmp_path / "stopped"))
    monkeypatch.setattr(PackedDocuments, "next_batch", original)
    resumed = pretrain.run(packed(tmp_path / "stopped", resume="auto"))
    a, b = weights(straight), weights(resumed)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert rows(resumed) == rows(straight)
    train = [r for r in rows(straight) if "loss" in r]
    assert all(0.9 < r["packing_efficiency"] <= 1.0 for r in train)
    packing = read_manifest(straight)["result"]["packing"]
    assert packing["rows"] == 8 * 2 * 4 and packing["cropped_tokens"] == 0
    assert packing == read_manifest(resumed)["result"]["packing"]
    assert packing["efficiency"] == pytest.approx(sum(r["packing_efficiency"] for r in train) / len(train), abs=1e-5)


def test_compiled_blocks_train_as_eager_ones_do(spine_tokens, tmp_path, monkeypatch):
    """`compile: true` (the tiny recipe's): each block through torch.compile, with value embeddings, rows
    packed from whole documents and document-causal attention, follows the eager run's losses step by step."""
    monkeypatch.setattr(pretrain, "peak_flops_for", lambda device: None)  # skips a 2 s matmul timing

    def run(out, compile):
        cfg = config(spine_tokens, out, max_steps=4, checkpoint_every=0, eval_every=0)
        cfg.model = dataclasses.replace(MODEL, dropout=0.0, value_embeddings=True)
        cfg.packing, cfg.doc_mask, cfg.compile, cfg.final_eval_stride = "bestfit", True, compile, 32
        cfg.optim = dataclasses.replace(cfg.optim, schedule="wsd", decay_fraction=0.4, min_lr_ratio=0.0)
        out = pretrain.run(cfg)
        return [r["loss"] for r in rows(out) if "loss" in r], read_manifest(out)["result"]["held_out_loss"]

    eager, eager_held_out = run(tmp_path / "eager", False)
    compiled, compiled_held_out = run(tmp_path / "compiled", True)
    assert len(eager) == len(compiled) == 4
    assert compiled == pytest.approx(eager, abs=1e-4)
    assert compiled_held_out == pytest.approx(eager_held_out, abs=1e-4)


def test_model_dir_metrics_and_result(spine_tokens, tmp_path):
    out = pretrain.run(config(spine_tokens, tmp_path / "run", max_steps=6, checkpoint_every=2,
                              keep_checkpoints=2))
    for name in ("model.safetensors", "config.json", "tokenizer.json", "train.yaml", "metrics.jsonl",
                 "manifest.json"):
        assert (out / name).is_file(), name
    assert [p.name for p in ckpt.checkpoint_dirs(out / "checkpoints")] == ["step-000004", "step-000006"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "elapsed_s"} <= train[0].keys()
    assert train[-1]["tokens"] == 6 * 4 * 32
    assert train[1]["lr"] == pytest.approx(1e-2)  # the end of a 2-step warmup
    evals = [r for r in records if "val_loss" in r]
    assert evals and all(r["val_bits_per_byte"] > 0 for r in evals)
    result = read_manifest(out)["result"]
    assert result["steps"] == 6 and result["tokens_seen"] == 6 * 4 * 32
    assert 0 < result["held_out_bits_per_byte"] < 8 * 4  # four bytes per token at most for this tokenizer
    model, tokenizer = load_model_dir(out)
    assert model.config == MODEL and tokenizer.vocab_size == 320


def test_a_wall_clock_budget_stops_the_run_with_a_checkpoint(spine_tokens, tmp_path, monkeypatch):
    out = pretrain.run(config(spine_tokens, tmp_path / "run", max_steps=10**6, max_minutes=1e-4,
                              schedule_clock="time"))
    result = read_manifest(out)["result"]
    assert result["stopped_by"] == "max_minutes" and result["steps"] >= 1
    assert ckpt.latest_checkpoint(out / "checkpoints") is not None
    # `groundup run` again: the same config with resume=auto finds the run finished and leaves it be
    before = file_digests(out)
    pretrain.run(config(spine_tokens, out, max_steps=10**6, max_minutes=1e-4, schedule_clock="time", resume="auto"))
    assert file_digests(out) == before
    # another config resumes, but the checkpoint has spent the budget: no step more
    monkeypatch.setattr(pretrain, "peak_flops_for", lambda device: None)  # skips a 2 s matmul timing
    changed = config(spine_tokens, out, max_steps=10**6, max_minutes=1e-4, schedule_clock="time", resume="auto")
    changed.final_eval_stride = 32
    pretrain.run(changed)
    again = read_manifest(out)["result"]
    assert again["steps"] == result["steps"] and again["stopped_by"] == "max_minutes"
    assert sum("val_loss" in r for r in rows(out)) == 1  # the final evaluation's row, once


def test_a_finished_run_is_left_alone_and_a_longer_one_resumes(spine_tokens, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "peak_flops_for", lambda device: None)  # skips a 2 s matmul timing

    def quick(out, **train):  # a final evaluation of half the windows
        cfg = config(spine_tokens, out, **train)
        cfg.final_eval_stride = 32
        return cfg

    out = pretrain.run(quick(tmp_path / "run"))
    before = file_digests(out)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run trained again")

    with monkeypatch.context() as m:
        m.setattr(pretrain, "train_loop", no_training)
        m.setattr(pretrain, "score_shard", no_training)
        assert pretrain.run(quick(out, resume="auto", progress_bar=True)) == out
        pretrain.run(quick(out))
    assert file_digests(out) == before  # model.safetensors, metrics, checkpoints: every byte

    longer = pretrain.run(quick(out, resume="auto", max_steps=10))
    assert read_manifest(longer)["result"]["steps"] == 10
    train_steps = [r["step"] for r in rows(longer) if "loss" in r]
    eval_steps = [r["step"] for r in rows(longer) if "val_loss" in r]
    assert train_steps == list(range(1, 11))
    assert eval_steps == [4, 10]  # the first run's final row at step 8 went with it: no row twice


def test_a_failed_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    model = Transformer(MODEL)
    optimizer = torch.optim.AdamW(model.parameters())
    first = ckpt.save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, state={"tokens_seen": 1})
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    real_save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(10)  # a half-written file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 2, model=model, optimizer=optimizer, state={"tokens_seen": 2})
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(tmp_path) == first
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    fresh = Transformer(MODEL)
    state = ckpt.load_checkpoint(first, model=fresh, optimizer=torch.optim.AdamW(fresh.parameters()))
    assert state["step"] == 1
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_a_process_killed_while_writing_a_checkpoint_leaves_the_previous_one(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time, torch
        from groundup.model.config import ModelConfig
        from groundup.model.transformer import Transformer
        from groundup.train import checkpoint as ckpt
        model = Transformer(ModelConfig.from_name("tiny-gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                                  block_size=16))
        opt = torch.optim.AdamW(model.parameters())
        ckpt.save_checkpoint({str(tmp_path)!r}, 1, model=model, optimizer=opt, state={{}})
        def hang(obj, path, *a, **k):
            open(path, "wb").write(b"partial")
            print("writing", flush=True)
            time.sleep(60)
        ckpt.torch.save = hang
        ckpt.save_checkpoint({str(tmp_path)!r}, 2, model=model, optimizer=opt, state={{}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert any(p.name.startswith(".tmp-step-000002") for p in tmp_path.iterdir())  # the torn write is there
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step-000001"
    model = Transformer(ModelConfig.from_name("tiny-gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                              block_size=16))
    assert ckpt.load_checkpoint(latest, model=model)["step"] == 1


def test_a_checkpoint_of_another_shape_is_refused_by_name(tmp_path):
    model = Transformer(MODEL)
    path = ckpt.save_checkpoint(tmp_path, 1, model=model, optimizer=torch.optim.AdamW(model.parameters()),
                                state={})
    wider = Transformer(ModelConfig.from_name("tiny-llama", n_layer=2, n_embd=64, n_head=4, n_kv_head=2,
                                              vocab_size=320, block_size=32))
    with pytest.raises(ValueError, match=r"shape mismatch .*tok_embeddings.weight: file \(320, 32\) vs model "
                                         r"\(320, 64\)"):
        ckpt.load_checkpoint(path, model=wider)


def test_missing_tokens_and_tokenizer_are_clear_errors(spine_tokens, tmp_path):
    with pytest.raises(FileNotFoundError, match="tokens dir"):
        pretrain.run(config(tmp_path / "nowhere", tmp_path / "out"))
    cfg = config(spine_tokens, tmp_path / "out")
    cfg.tokenizer = tmp_path / "no-tokenizer"
    with pytest.raises(FileNotFoundError, match="no-tokenizer"):
        pretrain.run(cfg)


def test_sequence_longer_than_the_model_is_refused(spine_tokens, tmp_path):
    cfg = config(spine_tokens, tmp_path / "out")
    cfg.seq_len = 64
    with pytest.raises(ValueError, match="block_size"):
        pretrain.run(cfg)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_non_finite_loss_skips_the_update(spine_tokens, tmp_path, monkeypatch, optimizer):
    from groundup.train import loop

    calls = {"n": 0}
    real = loop.train_loop

    def wrapped(state, spec, **kwargs):
        inner = spec.loss_fn

        def loss_fn(model, batch):
            calls["n"] += 1
            loss = inner(model, batch)
            return loss * float("nan") if calls["n"] == 2 else loss

        return real(state, dataclasses.replace(spec, loss_fn=loss_fn), **kwargs)

    monkeypatch.setattr(pretrain, "train_loop", wrapped)
    out = pretrain.run(config(spine_tokens, tmp_path / "run", optimizer, max_steps=3, eval_every=0))
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "skipped_non_finite"] == [1]
    assert all(torch.isfinite(t).all() for t in weights(out).values())


def test_compile_without_a_cpu_compiler_trains_eagerly_with_a_warning(monkeypatch, caplog):
    from groundup.parallel import apply_compile as compile_mod

    model = Transformer(MODEL)
    monkeypatch.setattr(compile_mod.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with caplog.at_level("WARNING"):
        assert compile_mod.apply_compile(model) is model
    assert "no C++ compiler" in caplog.text
    assert all(block._compiled_call_impl is None for block in model.blocks)  # nothing was compiled
