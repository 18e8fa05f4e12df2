"""Training memory: ZeRO's bytes per parameter, sharding, and Korthikanti's activation count."""

from __future__ import annotations

import dataclasses

import pytest

from groundup.model.config import ModelConfig
from groundup.plan import memory


def test_mixed_precision_adamw_is_16_bytes_per_param():
    states = memory.model_state_bytes(7e9, precision="bf16-mixed")
    assert states.total == pytest.approx(112e9)  # 7B: about 112 GB before sharding
    assert memory.PRECISIONS["bf16-mixed"].bytes_per_param == 16
    assert memory.PRECISIONS["fp16-mixed"].bytes_per_param == 16
    assert memory.PRECISIONS["fp32"].bytes_per_param == 16  # 4 + 4 + 8: no master copy in fp32
    assert memory.PRECISIONS["bf16"].bytes_per_param == 8


@pytest.mark.parametrize(("sharding", "expected"), [
    ("ddp", (2 + 2 + 12)),
    ("zero1", 2 + 2 + 12 / 8),
    ("zero2", 2 + (2 + 12) / 8),
    ("zero3", (2 + 2 + 12) / 8),
    ("fsdp", (2 + 2 + 12) / 8),
])
def test_zero_stages_shard_as_in_the_paper(sharding, expected):
    psi = 7.5e9  # ZeRO figure 1: Ψ = 7.5B on 64 devices; here 8
    states = memory.model_state_bytes(psi, precision="bf16-mixed", sharding=sharding, gpus=8)
    assert states.total == pytest.approx(expected * psi)


def test_activations_reproduce_korthikanti_for_a_gpt_block():
    # s·b·h·(34 + 5·a·s/h) bytes per layer, 16-bit activations, dropout, unfused attention.
    cfg = ModelConfig.gpt2(n_layer=2, n_head=16, n_embd=1024, block_size=512, dropout=0.1, attention_dropout=0.1)
    s, b, h, a = 512, 3, 1024, 16
    acts = memory.activation_bytes(cfg, micro_batch=b, seq_len=s, bytes_per_value=2, flash_attention=False)
    assert acts.per_layer == s * b * h * (34 + 5 * a * s / h)
    assert acts.layers == 2 * acts.per_layer
    # Full recomputation keeps 2·s·b·h per layer (the block input) plus one block being recomputed.
    ckpt = memory.activation_bytes(cfg, micro_batch=b, seq_len=s, checkpointing=True, flash_attention=False)
    assert ckpt.layers == 2 * 2 * s * b * h + acts.per_layer


def test_flash_attention_and_checkpointing_save_memory():
    cfg = ModelConfig.from_name("llama-2-7b")
    eager = memory.activation_bytes(cfg, micro_batch=1, seq_len=4096, flash_attention=False)
    flash = memory.activation_bytes(cfg, micro_batch=1, seq_len=4096)
    ckpt = memory.activation_bytes(cfg, micro_batch=1, seq_len=4096, checkpointing=True)
    assert ckpt.total < flash.total < eager.total
    # Activations grow linearly with the micro-batch.
    two = memory.activation_bytes(cfg, micro_batch=2, seq_len=4096)
    assert two.total == pytest.approx(2 * flash.total)


def test_training_memory_says_whether_it_fits():
    cfg = ModelConfig.from_name("llama-2-7b")
    ddp = memory.training_memory(cfg, gpus=8, micro_batch=1, seq_len=1024, device_memory=80e9)
    assert ddp.bytes_per_param == 16 and ddp.states.total == pytest.approx(16 * 6_738_415_616)
    assert ddp.fits is False  # 108 GB of states on an 80 GB device
    fsdp = memory.training_memory(cfg, sharding="fsdp", gpus=8, micro_batch=1, seq_len=1024,
                                  activation_checkpointing=True, device_memory=80e9)
    assert fsdp.fits is True and fsdp.gathered_weights > 0
    assert memory.training_memory(cfg).fits is None
    assert set(memory.breakdown(fsdp)) >= {"weights", "gradients", "optimizer_states", "activations"}


@pytest.mark.parametrize("bad", [
    lambda: memory.model_state_bytes(0),
    lambda: memory.model_state_bytes(1e9, gpus=0),
    lambda: memory.model_state_bytes(1e9, precision="fp8"),
    lambda: memory.model_state_bytes(1e9, sharding="zero4"),
    lambda: memory.activation_bytes(ModelConfig(), micro_batch=0),
])
def test_bad_input_is_refused(bad):
    with pytest.raises(ValueError):
        bad()


def test_as_dict_is_plain():
    d = memory.training_memory(dataclasses.replace(ModelConfig(), n_layer=2)).as_dict()
    assert d["total"] == pytest.approx(d["model_states"] + d["activations"] + d["gathered_weights"])


def test_a_mixture_of_experts_block_keeps_the_activations_of_its_k_experts():
    import dataclasses

    from groundup.plan.memory import activation_bytes

    moe = ModelConfig.from_name("mixtral-8x7b")
    dense = dataclasses.replace(moe, moe_experts=0)
    a = activation_bytes(moe, micro_batch=1, seq_len=1024)
    b = activation_bytes(dense, micro_batch=1, seq_len=1024)
    # per token, beyond the dense block: a second SwiGLU expert of width 14336 (gate and up, silu and product:
    # 4 x 14336 values of 2 bytes), the 2 dispatched copies of the 4096-wide input, 8 fp32 router logits
    extra = 4 * 14336 * 2 + 2 * 4096 * 2 + 8 * 4
    assert a.per_layer - b.per_layer == 1024 * extra
    assert a.layers - b.layers == 32 * 1024 * extra
