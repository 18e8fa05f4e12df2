"""Muon on 2 gloo processes: DDP, FSDP2 (Newton–Schulz on the gathered matrix, each rank keeping its shard) and
tensor parallelism train as one process does, and Muon's checkpoints move between one process and two."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from parallel_common import assert_same_losses, losses, make_config, torchrun, weights

from groundup.train import pretrain

MUON = {"optimizer": "muon", "muon": {"lr": 0.02, "adjust_lr": "original"}}


@pytest.fixture(scope="module")
def runs(spine_tokens, tmp_path_factory) -> dict[str, Path]:
    """One process with 2x accumulation; on 2 ranks: DDP, FSDP2, TP, and the one-process step-10 checkpoint
    resumed under FSDP2; then the FSDP2 run's step-10 checkpoint resumed in one process."""
    root = tmp_path_factory.mktemp("parallel_muon")
    out = {name: root / name for name in ("single", "ddp", "fsdp", "tp", "one_to_two", "two_to_one")}
    torch.set_num_threads(1)
    pretrain.run(make_config(tokens=spine_tokens, out=out["single"], optim=MUON))
    torchrun([
        {"tokens": spine_tokens, "out": out["ddp"], "optim": MUON, "parallel": {"data_parallel": "ddp"}},
        {"tokens": spine_tokens, "out": out["fsdp"], "optim": MUON, "parallel": {"data_parallel": "fsdp"}},
        {"tokens": spine_tokens, "out": out["tp"], "optim": MUON, "parallel": {"tensor_parallel": 2}},
        {"tokens": spine_tokens, "out": out["one_to_two"], "optim": MUON, "parallel": {"data_parallel": "fsdp"},
         "resume": out["single"] / "checkpoints" / "step-000010"},
    ])
    pretrain.run(make_config(tokens=spine_tokens, out=out["two_to_one"], optim=MUON,
                             resume=str(out["fsdp"] / "checkpoints" / "step-000010")))
    return out


@pytest.mark.parametrize("name", ["ddp", "fsdp", "tp"])
def test_muon_on_two_ranks_equals_one_process(runs, name):
    single = losses(runs["single"])
    assert len(single) == 20 and single[20] < single[1] - 0.3  # it trained
    assert_same_losses(single, losses(runs[name]), range(1, 21))
    a, b = weights(runs["single"]), weights(runs[name])
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_muon_checkpoints_move_between_one_process_and_two(runs):
    single = losses(runs["single"])
    assert_same_losses(single, losses(runs["one_to_two"]), range(11, 21))
    assert_same_losses(single, losses(runs["two_to_one"]), range(11, 21))
