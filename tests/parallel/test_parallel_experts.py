"""Expert parallelism on 2 gloo processes (CPU): a mixture-of-experts model with its experts split over the ranks
(tokens moved by all-to-all) trains as one process does, under DDP and FSDP2; its checkpoint resumes in one
process; its model dir is the one process's; bad settings are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from parallel_common import assert_same_losses, losses, make_config, torchrun, weights

from groundup.train import pretrain

# 4 experts, 2 per token, DeepSeek-V3's bias balancing (a fast rate, for the 20 steps): the bias moves with the
# loads, which are then global ones on every rank
MOE = {"moe_experts": 4, "moe_top_k": 2, "moe_hidden": 32, "moe_balance": "bias", "moe_bias_rate": 1e-2}


@pytest.fixture(scope="module")
def runs(spine_tokens, tmp_path_factory) -> dict[str, Path]:
    """One process with 2x accumulation; on 2 ranks with expert_parallel=2: DDP and FSDP2; then the DDP run's
    step-10 checkpoint resumed in one process."""
    root = tmp_path_factory.mktemp("experts")
    out = {name: root / name for name in ("single", "ep_ddp", "ep_fsdp", "ep_to_one")}
    torch.set_num_threads(1)
    pretrain.run(make_config(tokens=spine_tokens, out=out["single"], model=MOE))
    torchrun([
        {"tokens": spine_tokens, "out": out["ep_ddp"], "model": MOE,
         "parallel": {"data_parallel": "ddp", "expert_parallel": 2}},
        {"tokens": spine_tokens, "out": out["ep_fsdp"], "model": MOE,
         "parallel": {"data_parallel": "fsdp", "expert_parallel": 2}},
    ])
    pretrain.run(make_config(tokens=spine_tokens, out=out["ep_to_one"], model=MOE,
                             resume=str(out["ep_ddp"] / "checkpoints" / "step-000010")))
    return out


def metric(run_dir: Path, key: str) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r[key] for r in lines if key in r and "event" not in r}


def test_expert_parallel_ddp_equals_one_process(runs):
    single, ep = losses(runs["single"]), losses(runs["ep_ddp"])
    assert len(single) == 20
    assert_same_losses(single, ep, range(1, 21))
    assert single[20] < single[1] - 0.3  # it trained
    # the logged loads are the global batch's: the same figures as one process's
    a, b = metric(runs["single"], "moe_load_max_over_mean"), metric(runs["ep_ddp"], "moe_load_max_over_mean")
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) < 1e-6 for s in a)
    # the gathered model dir holds every expert, equal to the one process's (and the moved biases)
    w1, w2 = weights(runs["single"]), weights(runs["ep_ddp"])
    assert w1.keys() == w2.keys() and w1["blocks.0.mlp.experts.fc"].shape[0] == 4
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4
    assert w1["blocks.1.mlp.expert_bias"].abs().sum() > 0


def test_expert_parallel_fsdp_equals_one_process(runs):
    assert_same_losses(losses(runs["single"]), losses(runs["ep_fsdp"]), range(1, 21))
    w1, w2 = weights(runs["single"]), weights(runs["ep_fsdp"])
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4


def test_expert_parallel_checkpoint_resumes_in_one_process(runs):
    assert_same_losses(losses(runs["single"]), losses(runs["ep_to_one"]), range(11, 21))
