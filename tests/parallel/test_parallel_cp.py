"""Context parallelism on gloo (CPU): the head-tail layout and masks, one forward/backward against the whole model
(2 and 4 ranks, with tensor parallelism), and pretraining runs that equal one process step by step: CP on 2 ranks
(DDP and FSDP2) and TP x CP (2 x 2)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from parallel_common import MODEL, assert_same_losses, losses, make_config, torchrun, weights

from groundup.model.transformer import document_causal_mask, sliding_window_mask
from groundup.parallel.apply_cp import (
    SequenceShard,
    check_mesh,
    check_model,
    check_sequence_length,
    local_positions,
    to_rank_order,
    to_sequence_order,
)
from groundup.train import pretrain


@pytest.mark.parametrize("cp", [2, 3, 4])
def test_head_tail_chunks_cover_the_sequence_once_and_balance_the_work(cp):
    T = 8 * cp
    shares = [local_positions(T, cp, r) for r in range(cp)]
    assert sorted(torch.cat(shares).tolist()) == list(range(T))
    assert shares[0].tolist()[:4] == [0, 1, 2, 3] and shares[0].tolist()[-1] == T - 1  # first and last chunk
    # causal work (keys each query sees) is the same on every rank
    assert len({int((s + 1).sum()) for s in shares}) == 1
    full = torch.randn(2, 3, T, 5)
    parts = to_rank_order(full, cp)
    assert torch.equal(parts[1], full[:, :, local_positions(T, cp, 1)])
    assert torch.equal(to_sequence_order(parts), full)


def test_the_masks_are_the_whole_sequence_rows_of_the_queries_held():
    T, cp, window = 24, 3, 5
    segments = torch.tensor([[0] * 7 + [1] * 10 + [2] * 7, [0] * 24])
    whole = document_causal_mask(segments) & sliding_window_mask(T, window)  # (B, 1, T, T)
    for r in range(cp):
        pos = local_positions(T, cp, r)
        shard = SequenceShard(pos, 2, T, None, cp, window=window, segments=segments)
        assert torch.equal(shard.mask, whole[:, :, pos])
        assert shard.positions.shape == (2, 2 * T // (2 * cp))
    causal = SequenceShard(local_positions(T, cp, 1), 2, T, None, cp).mask
    assert torch.equal(causal[0, 0], torch.ones(T, T, dtype=torch.bool).tril()[local_positions(T, cp, 1)])


def test_a_sequence_length_that_does_not_split_is_refused_naming_the_setting(spine_tokens, tmp_path):
    with pytest.raises(ValueError, match=r"seq_len 30 must be divisible by 2 x parallel.context_parallel = 4"):
        check_sequence_length(30, 2)
    check_sequence_length(30, 1)
    cfg = make_config(tokens=spine_tokens, out=tmp_path / "x", parallel={"context_parallel": 3})
    with pytest.raises(ValueError, match=r"seq_len 32 must be divisible by 2 x parallel.context_parallel = 6"):
        pretrain.run(cfg)
    cfg = make_config(tokens=spine_tokens, out=tmp_path / "y", parallel={"context_parallel": 2})
    with pytest.raises(ValueError, match=r"parallel.context_parallel > 1 needs several processes"):
        pretrain.run(cfg)


def test_options_it_cannot_compute_exactly_are_refused_by_name():
    import dataclasses

    with pytest.raises(ValueError, match="attention_dropout"):
        check_model(dataclasses.replace(MODEL, attention_dropout=0.1))
    with pytest.raises(ValueError, match="a mixture of experts \\(model.moe_experts=4\\)"):
        check_model(dataclasses.replace(MODEL, moe_experts=4, moe_top_k=2))
    check_model(dataclasses.replace(MODEL, sliding_window=8, value_embeddings=True, qk_norm=True))
    with pytest.raises(ValueError, match="parallel.pipeline_parallel > 1"):
        check_mesh(SimpleNamespace(mesh_dim_names=("pp", "dp", "cp")))
    check_mesh(SimpleNamespace(mesh_dim_names=("dp", "cp", "tp")))


CHECKS_2 = [{"name": "rope_gqa"}, {"name": "window", "model": {"sliding_window": 7}},
            {"name": "documents", "segments": True},
            {"name": "value_embeddings_qk_norm", "model": {"value_embeddings": True, "qk_norm": True}},
            {"name": "learned_positions", "preset": "tiny-gpt2", "model": {"n_kv_head": None}},
            {"name": "some_targets_ignored", "ignore": "some"},
            {"name": "all_targets_of_rank_1_ignored", "ignore": "rank1"},
            {"name": "activation_checkpointing", "ac": True, "segments": True}]
CHECKS_4 = [{"name": "tp2_cp2_documents_window", "tp": 2, "segments": True, "model": {"sliding_window": 9}},
            {"name": "cp4_some_targets_ignored", "ignore": "some"}]


@pytest.fixture(scope="module")
def runs(spine_tokens, tmp_path_factory) -> dict:
    """One process with 2x accumulation; on 2 ranks: the one-batch checks, then pretraining with CP under DDP; on
    4 ranks: the checks, then TP x CP (2 x 2, FSDP2 over the flattened dp x cp ranks); then the CP run's step-10
    checkpoint resumed in one process."""
    root = tmp_path_factory.mktemp("cp")
    out = {name: root / name for name in ("single", "cp", "tp_cp", "cp_to_one")}
    torch.set_num_threads(1)
    pretrain.run(make_config(tokens=spine_tokens, out=out["single"]))
    two = torchrun([*CHECKS_2, {"tokens": spine_tokens, "out": out["cp"], "parallel": {"context_parallel": 2}}],
                   worker="cp_worker.py")
    four = torchrun([*CHECKS_4, {"tokens": spine_tokens, "out": out["tp_cp"],
                                 "parallel": {"context_parallel": 2, "tensor_parallel": 2}}],
                    nproc=4, worker="cp_worker.py")
    pretrain.run(make_config(tokens=spine_tokens, out=out["cp_to_one"],
                             resume=str(out["cp"] / "checkpoints" / "step-000010")))
    return {**out, "stdout": {2: two.stdout, 4: four.stdout}}


@pytest.mark.parametrize(("nproc", "checks"), [(2, CHECKS_2), (4, CHECKS_4)], ids=["2_ranks", "4_ranks"])
def test_one_forward_and_backward_equal_the_whole_sequence_in_one_process(runs, nproc, checks):
    # the worker exits non-zero (and the fixture fails) on a loss, gradient or logits difference over 1e-5
    lines = [line for line in runs["stdout"][nproc].splitlines() if line.startswith("case ")]
    assert [line.split()[1].rstrip(":") for line in lines] == [c["name"] for c in checks]


@pytest.mark.parametrize("name", ["cp", "tp_cp"], ids=["cp2", "tp2_x_cp2"])
def test_context_parallel_training_equals_one_process(runs, name):
    single, parallel = losses(runs["single"]), losses(runs[name])
    assert len(single) == len(parallel) == 20
    assert_same_losses(single, parallel, range(1, 21))
    assert single[20] < single[1] - 0.3  # it trained
    a, b = weights(runs["single"]), weights(runs[name])
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_fine_tuning_refuses_context_parallelism(spine_model, tmp_path):
    from groundup.finetune.common import setup
    from groundup.finetune.continued import Config
    from groundup.parallel.config import ParallelConfig

    cfg = Config(model=spine_model, out=tmp_path / "ft", device="cpu", parallel=ParallelConfig(context_parallel=2))
    with pytest.raises(ValueError, match=r"parallel.context_parallel=2: .* by `groundup pretrain` only"):
        setup(cfg)


def test_a_context_parallel_checkpoint_resumes_in_one_process(runs):
    import json

    state = json.loads((runs["cp"] / "checkpoints" / "step-000010" / "state.json").read_text())
    assert state["world_size"] == 2 and state["sampler"]["batches"] == 20  # 2 ranks, one data-parallel index
    assert_same_losses(losses(runs["single"]), losses(runs["cp_to_one"]), range(11, 21))
