"""Expert parallelism on 2 gloo processes (CPU): a mixture-of-experts model with its experts split over the ranks
(tokens moved by all-to-all) trains as one process does, under DDP and FSDP2, with LoRA on the experts too, and
when one rank's experts get no token; its checkpoint resumes in one process; its model dir is the one process's;
bad settings are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from parallel_common import assert_same_losses, losses, make_config, preset_expert_bias, torchrun, weights
from safetensors.torch import load_file

from groundup.train import pretrain

# every token to experts 2 and 3, both on rank 1: rank 0's experts get none
COLLAPSED = [0.0, 0.0, 10.0, 10.0]
# 4 experts, 2 per token, DeepSeek-V3's bias balancing (a fast rate, for the 20 steps): the bias moves with the
# loads, which are then global ones on every rank
MOE = {"moe_experts": 4, "moe_top_k": 2, "moe_hidden": 32, "moe_balance": "bias", "moe_bias_rate": 1e-2}


def lora_args(base: Path, tokens: Path, out: Path, *extra: str) -> list[str]:
    """`groundup finetune continue` with LoRA on the experts' stacked weights and the attention."""
    return ["continue", "--model", str(base), "--tokens", str(tokens), "--out", str(out), "--seq_len", "32",
            "--eval_windows", "2", "--device", "cpu", "--batch_size", "2", "--seed", "3", "--optim.lr", "3e-3",
            "--optim.warmup_steps", "2", "--train.max_steps", "6", "--train.grad_accum", "2",
            "--train.log_every", "1", "--train.eval_every", "0", "--train.progress_bar", "false",
            "--lora.enabled", "true", "--lora.targets", '["*.mlp.experts", "*.attn.qkv"]', *extra]


@pytest.fixture(scope="module")
def runs(spine_tokens, tmp_path_factory) -> dict[str, Path]:
    """One process with 2x accumulation (and one with a collapsed router); on 2 ranks with expert_parallel=2:
    DDP and FSDP2, LoRA (experts and attention) on the one-process model under DDP, the one-process step-10
    checkpoint resumed under FSDP2, the collapsed router; then the DDP run's step-10 checkpoint resumed in one
    process, and the LoRA run in one process."""
    from groundup import cli

    root = tmp_path_factory.mktemp("experts")
    out = {name: root / name for name in ("single", "ep_ddp", "ep_fsdp", "ep_to_one", "lora", "ep_lora",
                                          "collapsed", "ep_collapsed", "one_to_ep")}
    torch.set_num_threads(1)
    pretrain.run(make_config(tokens=spine_tokens, out=out["single"], model=MOE))
    with preset_expert_bias(COLLAPSED):
        pretrain.run(make_config(tokens=spine_tokens, out=out["collapsed"], model=MOE, max_steps=6))
    torchrun([
        {"tokens": spine_tokens, "out": out["ep_ddp"], "model": MOE,
         "parallel": {"data_parallel": "ddp", "expert_parallel": 2}},
        {"tokens": spine_tokens, "out": out["ep_fsdp"], "model": MOE,
         "parallel": {"data_parallel": "fsdp", "expert_parallel": 2}},
        {"finetune": lora_args(out["single"], spine_tokens, out["ep_lora"], "--parallel.expert_parallel", "2")},
        {"tokens": spine_tokens, "out": out["one_to_ep"], "model": MOE,
         "parallel": {"data_parallel": "fsdp", "expert_parallel": 2},
         "resume": out["single"] / "checkpoints" / "step-000010"},
        {"tokens": spine_tokens, "out": out["ep_collapsed"], "model": MOE, "max_steps": 6, "expert_bias": COLLAPSED,
         "parallel": {"data_parallel": "ddp", "expert_parallel": 2}},
    ])
    assert cli.main(["finetune", *lora_args(out["single"], spine_tokens, out["lora"])]) == 0
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


def test_expert_parallel_checkpoint_resumes_in_one_process_and_back(runs):
    assert_same_losses(losses(runs["single"]), losses(runs["ep_to_one"]), range(11, 21))
    assert_same_losses(losses(runs["single"]), losses(runs["one_to_ep"]), range(11, 21))


def test_lora_on_the_experts_under_expert_parallelism_equals_one_process(runs):
    assert_same_losses(losses(runs["lora"]), losses(runs["ep_lora"]), range(1, 7))
    a = load_file(str(runs["lora"] / "adapter" / "adapter.safetensors"))
    b = load_file(str(runs["ep_lora"] / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys() and a["blocks.1.mlp.experts.fc_lora_B"].shape == (4, 64, 8)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert a["blocks.1.mlp.experts.proj_lora_B"].abs().sum() > 0  # the expert adapters trained
    w1, w2 = weights(runs["lora"]), weights(runs["ep_lora"])  # the merged models
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5


def test_a_rank_whose_experts_get_no_token_keeps_step_with_the_others(runs):
    # rank 0's experts receive nothing all run: it still joins every all-to-all (forward and backward) and its
    # experts get the zero gradient one process gives them
    assert metric(runs["collapsed"], "moe_load_max_over_mean")[1] == 2.0  # half the experts take every token
    assert_same_losses(losses(runs["collapsed"]), losses(runs["ep_collapsed"]), range(1, 7))
    w1, w2 = weights(runs["collapsed"]), weights(runs["ep_collapsed"])
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5


def test_bad_expert_parallel_settings_are_named():
    from groundup.model.config import ModelConfig
    from groundup.model.transformer import Transformer
    from groundup.parallel.apply_ep import check_ep
    from groundup.parallel.config import ParallelConfig
    from groundup.parallel.env import DistEnv
    from groundup.parallel.parallelize import parallelize

    moe = ModelConfig.from_name("tiny-llama", n_layer=1, n_embd=32, n_head=4, n_kv_head=2, vocab_size=64,
                                block_size=16, moe_experts=6, moe_top_k=2)
    with pytest.raises(ValueError, match=r"model.moe_experts=6 is not divisible by parallel.expert_parallel=4"):
        check_ep(moe, 4, 4)
    with pytest.raises(ValueError, match=r"parallel.expert_parallel=3 must divide the data-parallel degree 4"):
        check_ep(moe, 3, 4)
    with pytest.raises(ValueError, match=r"parallel.expert_parallel=2 needs a mixture-of-experts model"):
        check_ep(ModelConfig.from_name("tiny-llama", n_layer=1), 2, 2)
    check_ep(moe, 2, 4)  # 6 experts, 3 per rank, two groups of 2 ranks
    with pytest.raises(ValueError, match=r"parallel.expert_parallel must be >= 1, got 0"):
        ParallelConfig(expert_parallel=0)
    with pytest.raises(ValueError, match=r"parallel.expert_parallel=2 needs several processes"):
        parallelize(Transformer(moe), ParallelConfig(expert_parallel=2), DistEnv())
    with pytest.raises(ValueError, match=r"moe_top_k \(7\) must be between 1 and moe_experts \(6\)"):
        ModelConfig.from_name("tiny-llama", n_layer=1, moe_experts=6, moe_top_k=7)
