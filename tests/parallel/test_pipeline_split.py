"""Pipeline stages without processes: how the blocks split, which rank runs which stage, settings refused by
name, and a model cut into parts computing what the whole model computes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from groundup.model.config import ModelConfig
from groundup.model.transformer import Transformer
from groundup.parallel.apply_pp import (
    check_model,
    default_microbatches,
    model_part,
    rank_part,
    schedule_name,
    stage_layout,
    stage_modules,
    stage_ranks,
    stage_sizes,
)
from groundup.parallel.config import ParallelConfig
from groundup.parallel.env import DistEnv
from groundup.parallel.parallelize import parallelize

CONFIG = ModelConfig.from_name("tiny-llama", n_layer=6, n_embd=32, n_head=4, n_kv_head=2, vocab_size=64,
                               block_size=16, dropout=0.0, tie_embeddings=False)


def test_blocks_split_evenly_the_earlier_stages_taking_the_rest():
    assert stage_sizes(8, 4) == [2, 2, 2, 2]
    assert stage_sizes(7, 3) == [3, 2, 2]
    assert stage_sizes(6, 2, [1, 5]) == [1, 5]


@pytest.mark.parametrize("split", [[2, 2], [3, 2, 2], [6, 0]])
def test_a_pipeline_split_that_does_not_sum_to_n_layer_is_refused_by_name(split):
    with pytest.raises(ValueError, match=r"parallel.pipeline_split=.* n_layer=6"):
        stage_sizes(6, 2, split)


def test_a_layer_count_smaller_than_the_stages_is_refused_by_name():
    with pytest.raises(ValueError, match="n_layer=3 does not split into 4 pipeline stages"):
        stage_sizes(3, 4)
    with pytest.raises(ValueError, match="n_layer=6 does not split into 8"):  # 2 stages per rank x 4 ranks
        stage_layout(CONFIG, 4, 0, "Interleaved1F1B", None)


def test_stages_go_round_the_ranks_or_down_and_back_for_the_v_schedule():
    assert stage_ranks("1F1B", 4) == [0, 1, 2, 3]
    assert stage_ranks("Interleaved1F1B", 2) == [0, 1, 0, 1]
    assert stage_ranks("ZBVZeroBubble", 2) == [0, 1, 1, 0]
    assert schedule_name("schedulegpipe") == "GPipe"
    with pytest.raises(ValueError, match="parallel.pipeline_schedule='PipeDream' is not one of"):
        schedule_name("PipeDream")


def test_options_pipeline_stages_cannot_run_are_refused_by_name():
    with pytest.raises(ValueError, match="model.tie_embeddings"):
        check_model(dataclasses.replace(CONFIG, tie_embeddings=True), 2)
    check_model(dataclasses.replace(CONFIG, tie_embeddings=True), 1)  # one stage: nothing to refuse
    moe = dataclasses.replace(CONFIG, moe_experts=4, moe_top_k=2, moe_balance="aux_loss", moe_aux_loss_coef=0.01)
    with pytest.raises(ValueError, match="model.moe_aux_loss_coef"):
        check_model(moe, 2)


def test_micro_batches_default_to_twice_the_ranks_or_what_divides_the_rows():
    assert default_microbatches(16, 4) == 8
    assert default_microbatches(12, 4) == 6
    assert default_microbatches(6, 4) == 6
    assert default_microbatches(4, 4) == 4
    with pytest.raises(ValueError, match="parallel.pipeline_microbatches"):
        default_microbatches(5, 2)


def test_pipeline_parallelism_in_one_process_is_refused():
    with pytest.raises(ValueError, match="parallel.pipeline_parallel > 1 needs several processes"):
        parallelize(Transformer(CONFIG), ParallelConfig(pipeline_parallel=2), DistEnv())


@pytest.mark.parametrize("options", [{}, {"value_embeddings": True, "position": "learned"}])
def test_parts_keep_the_whole_models_names_and_compute_its_loss_and_gradients(options):
    config = dataclasses.replace(CONFIG, **options)
    torch.manual_seed(0)
    whole = Transformer(config)
    idx = torch.randint(0, config.vocab_size, (2, 16))
    targets = torch.randint(0, config.vocab_size, (2, 16))
    segments = torch.tensor([[0] * 5 + [1] * 11, [0] * 16])
    expected = whole(idx, targets, segments=segments)
    expected.backward()
    grads = {n: p.grad.clone() for n, p in whole.named_parameters()}
    whole.zero_grad()

    layout = stage_layout(config, 2, 0, "ZBVZeroBubble", [1, 2, 2, 1])  # rank 0 runs stages 0 and 3
    part = rank_part(whole, layout)
    assert sorted(int(n) for n, _ in part.blocks.named_children()) == [0, 5]
    assert {n.split(".")[0] for n, _ in part.named_parameters()} == {
        "tok_embeddings", "blocks", "final_norm", "lm_head", *(["pos_embeddings"] if options else [])}
    first, last = stage_modules(part, layout)
    assert first.lm_head is None and last.tok_embeddings is None
    middle = model_part(whole, [1, 2, 3, 4], first=False, last=False)
    tokens = idx if options else None  # value embeddings read the ids in every block
    h = middle(first(idx, segments=segments, tokens=tokens), segments=segments, tokens=tokens)
    assert h.shape == (2, 16, config.n_embd)
    loss = last(h, targets, segments=segments, tokens=tokens)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    loss.backward()
    for name, p in whole.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-5, atol=1e-7)
    assert set(dict(part.named_parameters())) <= set(grads)
