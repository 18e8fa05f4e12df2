"""Scale-out training on 2 gloo processes (CPU): parity of DDP, FSDP2 and tensor parallelism with one process,
checkpoints that reshard 2 -> 1 and 1 -> 2 ranks, a NaN on one rank survived, a rank killed mid-checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from parallel_common import assert_same_losses, losses, make_config, torchrun, weights

from groundup.train import checkpoint as ckpt
from groundup.train import pretrain


def events(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in lines if "event" in r]


@pytest.fixture(scope="module")
def runs(spine_tokens, tmp_path_factory) -> dict[str, Path]:
    """One process with 2x accumulation; then, on 2 ranks in one launch: DDP, FSDP2, TP, a resume of the
    one-process checkpoint on 2 FSDP ranks, and a DDP run whose rank 1 gets a NaN loss; then the DDP run's
    step-10 checkpoint resumed in one process."""
    root = tmp_path_factory.mktemp("parallel")
    out = {name: root / name for name in ("single", "ddp", "fsdp", "tp", "one_to_two", "two_to_one", "nan")}
    torch.set_num_threads(1)
    pretrain.run(make_config(tokens=spine_tokens, out=out["single"]))
    torchrun([
        {"tokens": spine_tokens, "out": out["ddp"], "parallel": {"data_parallel": "ddp"}},
        {"tokens": spine_tokens, "out": out["fsdp"], "parallel": {"data_parallel": "fsdp"}},
        {"tokens": spine_tokens, "out": out["tp"], "parallel": {"tensor_parallel": 2}},
        {"tokens": spine_tokens, "out": out["one_to_two"], "parallel": {"data_parallel": "fsdp"},
         "resume": out["single"] / "checkpoints" / "step-000010"},
        {"tokens": spine_tokens, "out": out["nan"], "nan_at_call": 13, "nan_rank": 1},
    ])
    pretrain.run(make_config(tokens=spine_tokens, out=out["two_to_one"],
                             resume=str(out["ddp"] / "checkpoints" / "step-000010")))
    return out


def test_ddp_on_two_ranks_equals_one_process_with_twice_the_accumulation(runs):
    single, ddp = losses(runs["single"]), losses(runs["ddp"])
    assert len(single) == 20
    assert_same_losses(single, ddp, range(1, 21))
    # it trained: the loss falls by 0.6 to 0.9 in 20 steps over tokenizers trained on different splits of the corpus
    assert single[20] < single[1] - 0.3
    a, b = weights(runs["single"]), weights(runs["ddp"])
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_fsdp2_equals_ddp(runs):
    assert_same_losses(losses(runs["ddp"]), losses(runs["fsdp"]), range(1, 21))
    assert ckpt.is_distributed_checkpoint(runs["fsdp"] / "checkpoints" / "step-000010")


def test_tensor_parallel_on_two_ranks_equals_one_process(runs):
    assert_same_losses(losses(runs["single"]), losses(runs["tp"]), range(1, 21))
    # the saved model dir is in the model file's layout (the fused qkv / gate-up rows un-permuted)
    a, b = weights(runs["single"]), weights(runs["tp"])
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_checkpoint_of_two_ranks_resumes_on_one(runs):
    state = json.loads((runs["ddp"] / "checkpoints" / "step-000010" / "state.json").read_text())
    assert state["world_size"] == 2 and state["sampler"]["batches"] == 20  # the global data position
    assert_same_losses(losses(runs["single"]), losses(runs["two_to_one"]), range(11, 21))


def test_checkpoint_of_one_process_resumes_on_two_fsdp_ranks(runs):
    assert_same_losses(losses(runs["single"]), losses(runs["one_to_two"]), range(11, 21))


def test_a_nan_loss_on_one_rank_skips_the_update_on_all(runs):
    skipped = [e for e in events(runs["nan"]) if e["event"] == "skipped_non_finite"]
    # grad_accum 2 on 2 ranks: one forward per rank per step, so rank 1's 13th forward is in step 13
    # (counted from 0 in the event: 12); by then the ranks have consumed 13 x 2 global micro-batches
    assert len(skipped) == 1 and skipped[0]["step"] == 12
    assert skipped[0]["data_position"] == {"batches": 26, "seed": 7}
    nan, ddp = losses(runs["nan"]), losses(runs["ddp"])
    assert_same_losses(nan, ddp, range(1, 13))
    assert all(torch.isfinite(t).all() for t in weights(runs["nan"]).values())
    assert abs(nan[20] - ddp[20]) < 0.3  # one skipped update costs little


def test_a_rank_killed_while_writing_a_checkpoint_resumes_bitwise(runs, spine_tokens, tmp_path):
    out = tmp_path / "killed"
    run = {"tokens": spine_tokens, "out": out, "checkpoint_every": 5, "parallel": {"data_parallel": "ddp"}}
    done = torchrun([run], env={ckpt.FAULT_ENV: "10:1"}, check=False)
    assert done.returncode != 0
    # the torn step-10 write is not a checkpoint; step 5 is the newest complete one
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "step-000005"
    assert not (out / "model.safetensors").exists()
    torchrun([{**run, "resume": "auto"}])
    a, b = weights(runs["ddp"]), weights(out)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.parametrize("name", ["fsdp", "tp"])
def test_a_distributed_checkpoint_converts_to_the_model_dir(runs, name, tmp_path):
    from groundup.model.io import load_model_dir
    from groundup.train import consolidate

    out = consolidate.run(consolidate.Config(checkpoint=runs[name], out=tmp_path / "model"))
    a, b = weights(runs[name]), weights(out)  # the run's own final model dir vs its step-20 checkpoint
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    model, tokenizer = load_model_dir(out)
    assert model.config.n_layer == 2 and tokenizer.encode("def f(): pass")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        consolidate.run(consolidate.Config(checkpoint=tmp_path / "nowhere", out=tmp_path / "x"))
