"""The single pieces: per-rank batches, the tensor-parallel row order of fused projections, activation
checkpointing, and (with a GPU) bf16 FSDP2 + per-block compile over NCCL."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from parallel_common import MODEL

from groundup.model.transformer import Transformer
from groundup.parallel.apply_tp import fused_segments, interleave_order, to_plain_layout, to_tp_layout
from groundup.parallel.config import ParallelConfig
from groundup.parallel.data import RankBatches
from groundup.parallel.env import DistEnv
from groundup.parallel.parallelize import parallelize
from groundup.tokens.datasets import RandomWindows
from groundup.train.checkpoint import clean_name


def test_ranks_split_the_global_stream_without_overlap_or_gap():
    tokens = np.arange(500, dtype=np.uint16)
    one = RandomWindows(tokens, 8, 2, seed=3)
    expected = [one.next_batch()[0] for _ in range(8)]
    shared = [RandomWindows(tokens, 8, 2, seed=3) for _ in range(2)]
    views = [RankBatches(s, rank, 2) for rank, s in enumerate(shared)]
    got = []
    for _ in range(4):
        got += [views[0].next_batch()[0], views[1].next_batch()[0]]
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    assert views[0].state_dict() == views[1].state_dict() == one.state_dict() == {"batches": 8, "seed": 3}
    with pytest.raises(ValueError, match="rank 2"):
        RankBatches(shared[0], 2, 2)


def test_fused_rows_are_grouped_by_whole_heads_per_rank():
    cfg = MODEL  # 4 query heads, 2 key/value heads of 8 dims; SwiGLU fc = [gate; up]
    sizes = fused_segments(cfg)["attn.qkv"]
    assert sizes == [32, 16, 16]
    order = interleave_order(sizes, 2)
    rank0 = order[:32].tolist()  # rank 0's contiguous shard after the permutation
    assert rank0 == list(range(0, 16)) + list(range(32, 40)) + list(range(48, 56))  # q heads 0-1, k 0, v 0
    state = {"blocks.0.attn.qkv.weight": torch.randn(64, 32), "blocks.0.mlp.fc.weight": torch.randn(2 * cfg.mlp_hidden, 32),
             "blocks.0.attn.proj.weight": torch.randn(32, 32)}
    there = to_tp_layout(state, cfg, 2)
    assert torch.equal(there["blocks.0.attn.proj.weight"], state["blocks.0.attn.proj.weight"])
    assert not torch.equal(there["blocks.0.mlp.fc.weight"], state["blocks.0.mlp.fc.weight"])
    back = to_plain_layout(there, cfg, 2)
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_gives_the_same_gradients(mode):
    torch.manual_seed(0)
    plain = Transformer(MODEL)
    torch.manual_seed(0)
    wrapped, _ = parallelize(Transformer(MODEL), ParallelConfig(activation_checkpointing=mode, ac_every=2),
                             DistEnv())
    assert any(type(b).__name__ == "CheckpointWrapper" for b in wrapped.blocks)
    assert wrapped.state_dict().keys() == plain.state_dict().keys()  # names unchanged
    x = torch.randint(0, MODEL.vocab_size, (2, 16))
    plain(x, targets=x).backward()
    wrapped(x, targets=x).backward()
    grads = {clean_name(n): p.grad for n, p in wrapped.named_parameters()}
    for name, p in plain.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_fsdp2_with_per_block_compile_trains_over_nccl(spine_tokens, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from test_parallel_training import losses

    here = Path(__file__).parent
    run = {"tokens": str(spine_tokens), "out": str(tmp_path / "gpu"), "max_steps": 10, "checkpoint_every": 5,
           "parallel": {"data_parallel": "fsdp", "mixed_precision": "bf16"}}
    n = max(1, min(torch.cuda.device_count(), 2))
    code = (f"import json,sys; sys.path.insert(0, {str(here)!r}); from parallel_common import make_config; "
            "from groundup.train import pretrain; r=json.loads(sys.argv[1]); "
            "pretrain.run(make_config(**r, device='cuda', compile=True))")
    script = tmp_path / "gpu_run.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(n), str(script), json.dumps(run)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    got = losses(tmp_path / "gpu")
    assert all(np.isfinite(v) for v in got.values()) and got[10] < got[1]
