"""Pipeline bubbles, activations in flight, memory per device and communication per step of each parallel
dimension, against worked examples computed by hand (in the comments) and the papers' closed forms."""

from __future__ import annotations

import pytest

from groundup.model.config import ModelConfig
from groundup.plan import memory, parallelism
from groundup.plan.parallelism import Layout, bubble_fraction, in_flight_microbatches

GPT2 = ModelConfig.from_name("gpt2-124m")  # 12 blocks of 7,087,872 parameters, tied head, 124,439,808 in all
LLAMA = ModelConfig.from_name("llama-2-7b")  # 32 blocks, width 4096, 32 heads, no GQA, untied head


# --- pipeline bubble ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("schedule", "p", "m", "v", "expected"), [
    ("GPipe", 4, 8, 1, 3 / 11),  # (p−1)/(m+p−1) = 3/(8+3) = 0.2727
    ("1F1B", 4, 8, 1, 3 / 11),  # the same bubble as GPipe; less memory
    ("Interleaved1F1B", 4, 8, 2, 3 / 19),  # (p−1)/(v·m+p−1) = 3/(16+3) = 0.1579
    ("Interleaved1F1B", 4, 8, 4, 3 / 35),  # 3/(32+3)
    ("LoopedBFS", 8, 16, 2, 7 / 39),  # 7/(32+7)
    ("InterleavedZeroBubble", 4, 8, 2, 3 / 51),  # a third of interleaving's bubble time: 3/(3·16+3)
    ("ZBVZeroBubble", 4, 8, 2, 0.0),
    ("1F1B", 1, 8, 1, 0.0),  # one stage: nothing to wait for
    ("GPipe", 8, 1, 1, 7 / 8),  # one micro-batch: each stage busy 1 of p slots
])
def test_bubble_fraction_worked_examples(schedule, p, m, v, expected):
    assert bubble_fraction(schedule, p, m, v) == pytest.approx(expected, rel=1e-12)


def test_bubble_matches_narayanans_ratio_form():
    # Narayanan et al. 2021 give the bubble as a ratio to the ideal time: (p−1)/m, and (p−1)/(v·m) interleaved.
    for p, m, v in [(2, 4, 1), (4, 8, 2), (8, 32, 4), (16, 64, 3)]:
        f = bubble_fraction("1F1B", p, m)
        assert f / (1 - f) == pytest.approx((p - 1) / m)
        fi = bubble_fraction("Interleaved1F1B", p, m, v)
        assert fi / (1 - fi) == pytest.approx((p - 1) / (v * m))
        # ZB-H1 on interleaving idles a third as long as interleaving (T_F = T_B = T_W)
        fz = bubble_fraction("InterleavedZeroBubble", p, m, v)
        assert fz / (1 - fz) == pytest.approx((p - 1) / (v * m) / 3)


def test_more_microbatches_or_chunks_shrink_the_bubble():
    assert bubble_fraction("1F1B", 4, 16) < bubble_fraction("1F1B", 4, 8) < bubble_fraction("1F1B", 4, 4)
    assert bubble_fraction("Interleaved1F1B", 4, 8, 4) < bubble_fraction("Interleaved1F1B", 4, 8, 2)
    # v = 1 interleaving is plain 1F1B
    assert bubble_fraction("Interleaved1F1B", 4, 8, 1) == bubble_fraction("1F1B", 4, 8)


def test_schedule_names_as_torch_spells_them():
    from torch.distributed.pipelining import schedules

    for name in ("GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble", "ZBVZeroBubble"):
        assert hasattr(schedules, f"Schedule{name}")
        assert parallelism.schedule_name(name.lower()) == name
        assert parallelism.schedule_name(f"Schedule{name}") == name


@pytest.mark.parametrize(("args", "message"), [
    (("PipeDream", 4, 8), "unknown pipeline schedule 'PipeDream'; known: GPipe"),
    (("1F1B", 4, 8, 2), "1F1B runs one stage per rank; virtual_stages must be 1"),
    (("ZBVZeroBubble", 4, 8, 3), "exactly two stages per rank"),
    (("1F1B", 0, 8), "stages must be >= 1"),
    (("1F1B", 4, 0), "micro-batches must be >= 1"),
])
def test_bubble_fraction_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        bubble_fraction(*args)


# --- activations in flight ---------------------------------------------------------------------------------

def test_microbatches_in_flight_per_schedule():
    # 1F1B: rank r runs p − r forwards before its first backward; GPipe keeps all m.
    assert [in_flight_microbatches("1F1B", 4, 8, rank=r) for r in range(4)] == [4, 3, 2, 1]
    assert in_flight_microbatches("1F1B", 4, 2) == 2  # fewer micro-batches than stages
    assert in_flight_microbatches("GPipe", 4, 8) == 8
    assert in_flight_microbatches("LoopedBFS", 4, 8, 2) == 8
    # Interleaved, p = 4, v = 2, rank 0: warm-up 2·(p−1) + (v−1)·p = 6 + 4 = 10 chunk forwards, plus the one in
    # flight: 11 chunks of half a stage = 5.5 micro-batches, p + (p−1)/v = 4 + 1.5.
    assert in_flight_microbatches("Interleaved1F1B", 4, 8, 2) == 5.5
    # Korthikanti et al. 2022, 4.2.3: the first stage holds L·(1 + (p−1)/(p·v)) layers' activations; L = 32:
    # 32·(1 + 3/8) = 44 = 5.5 micro-batches x 8 layers per rank.
    assert in_flight_microbatches("Interleaved1F1B", 4, 8, 2) * 32 / 4 == 32 * (1 + 3 / 8)
    # the last rank: 2·0 + 4 + 1 = 5 chunks = 2.5
    assert in_flight_microbatches("Interleaved1F1B", 4, 8, 2, rank=3) == 2.5
    # ZB-V holds 1F1B's peak, p, on every rank
    assert in_flight_microbatches("ZBVZeroBubble", 4, 8, 2, rank=3) == 4


# --- activation memory with TP, SP and CP ------------------------------------------------------------------

def test_tensor_and_sequence_parallel_activations_follow_korthikanti():
    # GPT block, 16-bit, dropout, unfused attention: sbh(10 + 24/t + 5as/(ht)) per device with tensor parallelism
    # (section 4.2.1), sbh(34 + 5as/h)/t with sequence parallelism too (4.2.2).
    cfg = ModelConfig.gpt2(n_layer=2, n_head=16, n_embd=1024, block_size=512, dropout=0.1, attention_dropout=0.1)
    s, b, h, a, t = 512, 2, 1024, 16, 8
    tp = memory.activation_bytes(cfg, micro_batch=b, seq_len=s, flash_attention=False, tensor_parallel=t)
    assert tp.per_layer == pytest.approx(s * b * h * (10 + 24 / t + 5 * a * s / (h * t)))
    sp = memory.activation_bytes(cfg, micro_batch=b, seq_len=s, flash_attention=False, tensor_parallel=t,
                                 sequence_parallel=True)
    assert sp.per_layer == pytest.approx(s * b * h * (34 + 5 * a * s / h) / t)
    # with full recomputation, sequence parallelism splits the kept block inputs too: 2sbh/t per layer
    ckpt = memory.activation_bytes(cfg, micro_batch=b, seq_len=s, flash_attention=False, tensor_parallel=t,
                                   sequence_parallel=True, checkpointing=True)
    assert ckpt.layers == pytest.approx(2 * 2 * s * b * h / t + sp.per_layer)


def test_context_parallel_divides_every_per_token_term():
    one = memory.activation_bytes(LLAMA, micro_batch=1, seq_len=8192)
    four = memory.activation_bytes(LLAMA, micro_batch=1, seq_len=8192, context_parallel=4)
    assert four.per_layer == pytest.approx(one.per_layer / 4)
    assert four.total == pytest.approx(one.total / 4)
    with pytest.raises(ValueError, match="flash_attention must be on"):
        memory.activation_bytes(LLAMA, micro_batch=1, seq_len=8192, context_parallel=4, flash_attention=False)


# --- memory per device under pipeline parallelism ----------------------------------------------------------

def test_pipeline_ranks_hold_their_blocks_and_the_ends():
    # gpt2-124m on 4 stages: 3 blocks of 7,087,872 each = 21,263,616.
    # rank 0 adds wte 50,257·768 = 38,597,376 and wpe 1,024·768 = 786,432: 60,647,424;
    # rank 3 adds the final norm 1,536 and its own copy of the tied head, 38,597,376: 59,862,528.
    layout = Layout(gpus=4, pp=4, microbatches=8)
    first = parallelism.rank_parameters(GPT2, layout, 0)
    last = parallelism.rank_parameters(GPT2, layout, 3)
    middle = parallelism.rank_parameters(GPT2, layout, 1)
    assert first.total == pytest.approx(60_647_424)
    assert last.total == pytest.approx(59_862_528)
    assert middle.total == pytest.approx(21_263_616)
    # no pipeline: one rank holds the whole model, the tied head once
    assert parallelism.rank_parameters(GPT2, Layout(gpus=1), 0).total == pytest.approx(124_439_808)


def test_tensor_parallel_splits_attention_and_mlp_only():
    # gpt2-124m block: attention 2,362,368, MLP 4,722,432, norms 3,072; tp = 2 halves the first two:
    # 12·(3,542,400 + 3,072) = 42,545,664, plus the replicated embeddings and final norm 39,385,344 = 81,931,008.
    p = parallelism.rank_parameters(GPT2, Layout(gpus=2, tp=2), 0)
    assert p.total == pytest.approx(81_931_008)


def test_memory_per_device_of_a_pipeline_rank():
    layout = Layout(gpus=4, pp=4, microbatches=8)
    first, last = parallelism.pipeline_memory(GPT2, layout, micro_batch=4, seq_len=1024)
    assert first.role == "first" and last.role == "last"
    # DDP, bf16-mixed: 16 bytes per parameter held
    assert first.states.total == pytest.approx(16 * 60_647_424)
    # 1F1B: rank 0 keeps 4 micro-batches of its 3 blocks; the last rank 1, plus the head's
    acts = memory.activation_bytes(GPT2, micro_batch=4, seq_len=1024, layers=3)
    assert first.in_flight == 4 and first.activations == pytest.approx(4 * acts.layers)
    assert last.in_flight == 1 and last.activations == pytest.approx(acts.layers + acts.head)
    # GPipe keeps all 8 on every rank
    gpipe = parallelism.rank_memory(GPT2, Layout(gpus=4, pp=4, microbatches=8, schedule="GPipe"), 0,
                                    micro_batch=4, seq_len=1024)
    assert gpipe.activations == pytest.approx(8 * acts.layers)
    # with checkpointing, 4 micro-batches of block inputs (2 bytes x 768 per token) and one block recomputed
    ckpt = parallelism.rank_memory(GPT2, layout, 0, micro_batch=4, seq_len=1024, activation_checkpointing=True)
    tokens = 4 * 1024
    assert ckpt.activations == pytest.approx(4 * 3 * tokens * 768 * 2 + acts.per_layer)


def test_without_model_parallelism_the_rank_is_the_plain_training_memory():
    plain = memory.training_memory(LLAMA, sharding="zero3", gpus=8, micro_batch=2, seq_len=2048)
    (only,) = parallelism.pipeline_memory(LLAMA, Layout(gpus=8), sharding="zero3", micro_batch=2, seq_len=2048)
    assert only.role == "only"
    assert only.total == pytest.approx(plain.total)


def test_zbv_puts_both_ends_on_rank_zero():
    # gpt2-124m on 3 ranks of 2 chunks: 4 blocks per rank, 28,351,488; rank 0 runs chunk 0 (embeddings,
    # 39,383,808) and chunk 5 (final norm 1,536 and the head 38,597,376)
    layout = Layout(gpus=3, pp=3, microbatches=6, schedule="ZBVZeroBubble", virtual_stages=2)
    (rank0,) = parallelism.pipeline_memory(GPT2, layout, micro_batch=1, seq_len=1024)
    assert rank0.role == "first and last"
    assert rank0.parameters == pytest.approx(28_351_488 + 39_383_808 + 1_536 + 38_597_376)


# --- communication per step -------------------------------------------------------------------------------

def traffic(model, layout, **kwargs):
    return {t.dimension: t for t in parallelism.communication(model, layout, **kwargs)}


def test_data_parallel_volumes():
    # gpt2-124m on 8 ranks, bf16 gradients: all-reduce 2·(7/8)·124,439,808·2 = 435,539,328 bytes per device
    ddp = traffic(GPT2, Layout(gpus=8))["dp"]
    assert ddp.bytes_per_step == pytest.approx(435_539_328)
    assert ddp.collective == "all-reduce"
    # ZeRO-3/FSDP, one micro-batch: all-gather in forward and backward + reduce-scatter, 3·(7/8)·Ψ·2 = 653,308,992
    fsdp = traffic(GPT2, Layout(gpus=8), sharding="fsdp")["dp"]
    assert fsdp.bytes_per_step == pytest.approx(653_308_992)
    assert fsdp.bytes_per_step / ddp.bytes_per_step == pytest.approx(1.5)  # ZeRO section 7: 3Ψ against 2Ψ
    # ... and the weights are gathered again for each further micro-batch: (2·4 + 1)/3 of that with m = 4
    fsdp4 = traffic(GPT2, Layout(gpus=8, microbatches=4), sharding="fsdp")["dp"]
    assert fsdp4.bytes_per_step == pytest.approx(653_308_992 * 9 / 3)
    # one device: nothing to reduce
    assert "dp" not in traffic(GPT2, Layout(gpus=1))


def test_tensor_parallel_volume():
    # llama-2-7b, t = 8, b = 1, s = 4096, h = 4096, bf16: per all-reduce 2·(7/8)·4096·4096·2 = 58,720,256;
    # 4 per block x 32 blocks = 128 per micro-batch: 7,516,192,768 bytes per device.
    tp = traffic(LLAMA, Layout(gpus=8, tp=8), seq_len=4096)["tp"]
    assert tp.calls_per_step == 128
    assert tp.bytes_per_step == pytest.approx(7_516_192_768)
    # full recomputation repeats the forward's two: 6 per block
    ckpt = traffic(LLAMA, Layout(gpus=8, tp=8), seq_len=4096, activation_checkpointing=True)["tp"]
    assert ckpt.bytes_per_step == pytest.approx(7_516_192_768 * 6 / 4)
    # sequence parallelism: all-gather + reduce-scatter, the same bytes
    sp = traffic(LLAMA, Layout(gpus=8, tp=8, sequence_parallel=True), seq_len=4096)["tp"]
    assert sp.bytes_per_step == pytest.approx(tp.bytes_per_step) and "reduce-scatter" in sp.collective


def test_pipeline_volume():
    # gpt2-124m, p = 4, m = 8, b = 8, s = 1024, h = 768, bf16: each boundary b·s·h·a = 12,582,912 bytes,
    # forward activation and backward gradient per micro-batch: 2·8·12,582,912 = 201,326,592; twice with v = 2.
    pp = traffic(GPT2, Layout(gpus=4, pp=4, microbatches=8), micro_batch=8, seq_len=1024)["pp"]
    assert pp.bytes_per_step == pytest.approx(201_326_592)
    inter = traffic(GPT2, Layout(gpus=3, pp=3, microbatches=8, schedule="Interleaved1F1B", virtual_stages=2),
                    micro_batch=8, seq_len=1024)["pp"]
    assert inter.bytes_per_step == pytest.approx(2 * 201_326_592)


def test_context_parallel_ring_volume():
    # llama-2-7b (h_kv = 32·128 = 4096), cp = 4, b = 1, s = 8192, bf16: K and V forward per layer
    # (3/4)·2·1·8192·4096·2 = 100,663,296 bytes
    assert parallelism.ring_kv_bytes(LLAMA, cp=4, micro_batch=1, seq_len=8192) == pytest.approx(100_663_296)
    # llama-3-8b has 8 K/V heads: a quarter of that
    llama3 = ModelConfig.from_name("llama-3-8b")
    assert parallelism.ring_kv_bytes(llama3, cp=4, micro_batch=1, seq_len=8192) == pytest.approx(25_165_824)
    # per step: 32 layers x (forward + backward's K/V again, 2 x 100,663,296, + dK/dV a full lap in fp32,
    # 2·8192·4096·4 = 268,435,456) = 32 x 469,762,048 = 15,032,385,536
    cp = traffic(LLAMA, Layout(gpus=4, cp=4), seq_len=8192)["cp"]
    assert cp.bytes_per_step == pytest.approx(15_032_385_536)
    # the context-parallel ranks hold the same weights: gradients are reduced over them
    assert traffic(LLAMA, Layout(gpus=4, cp=4), seq_len=8192)["dp"].group == 4


def test_context_parallel_overlap_condition():
    # H100 at 40% of 989.5 TFLOP/s, NVLink 450 GB/s, MHA: c ≥ F·a·h_kv/(2·B·h) = 395.8e12·2/(2·450e9) = 879.6
    need = parallelism.cp_overlap_min_tokens(LLAMA, flops_per_s=0.4 * 989.5e12, link_bytes_per_s=450e9)
    assert need == pytest.approx(0.4 * 989.5e12 / 450e9)
    # 8 K/V heads of 32: a quarter the bytes per token, a quarter the chunk needed
    llama3 = ModelConfig.from_name("llama-3-8b")
    assert parallelism.cp_overlap_min_tokens(llama3, flops_per_s=0.4 * 989.5e12, link_bytes_per_s=450e9) == \
        pytest.approx(need / 4)


def test_expert_parallel_volume_only_for_moe():
    moe = ModelConfig.llama(name="moe", n_layer=4, n_head=4, n_embd=256, vocab_size=1000, block_size=512,
                            moe_experts=8, moe_top_k=2)
    # per MoE block and micro-batch 4 all-to-alls of k·b·s·h·a = 2·2·512·256·2 = 1,048,576 bytes, 3/4 of it sent:
    # 4 blocks x 4 x 786,432 = 12,582,912
    ep = traffic(moe, Layout(gpus=4, ep=4), micro_batch=2, seq_len=512)["ep"]
    assert ep.calls_per_step == 16
    assert ep.bytes_per_step == pytest.approx(12_582_912)
    # ep = 1: every expert local, no all-to-all; a dense model cannot take ep > 1
    assert "ep" not in traffic(moe, Layout(gpus=4), micro_batch=2, seq_len=512)
    with pytest.raises(ValueError, match="ep=4 needs a mixture-of-experts model"):
        traffic(GPT2, Layout(gpus=4, ep=4))
    # experts split 4 ways: each device holds a quarter of the routed experts
    full = parallelism.rank_parameters(moe, Layout(gpus=4), 0)
    split = parallelism.rank_parameters(moe, Layout(gpus=4, ep=4), 0)
    assert split.experts == pytest.approx(full.experts / 4) and split.dense == full.dense


@pytest.mark.parametrize(("layout", "seq_len", "message"), [
    (Layout(gpus=5, pp=5), 1024, r"n_layer=12 does not split into pp=5 stages"),
    (Layout(gpus=8, pp=4, schedule="Interleaved1F1B", virtual_stages=2), 1024,
     r"n_layer=12 does not split into pp=4 stages x 2 virtual stages \(8 equal chunks\)"),
    (Layout(gpus=8, cp=4), 1020, r"seq_len=1020 is not divisible by 2 x cp = 8"),
    (Layout(gpus=8, tp=3), 1024, r"tp x pp x cp = 3 x 1 x 1 = 3 does not divide gpus=8"),
    (Layout(gpus=16, tp=2, pp=3, cp=2), 1024, r"tp x pp x cp = 2 x 3 x 2 = 12 does not divide gpus=16"),
    (Layout(gpus=10, tp=5), 1024, r"tp=5 does not divide n_head=12"),
])
def test_layout_errors_name_the_settings(layout, seq_len, message):
    with pytest.raises(ValueError, match=message):
        parallelism.check_layout(GPT2, layout, seq_len=seq_len)
