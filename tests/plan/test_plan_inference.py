"""Inference: weight memory, KV cache and decode bounds against published figures."""

from __future__ import annotations

import pytest

from groundup.model.config import ModelConfig
from groundup.plan import inference

LLAMA2_7B = ModelConfig.from_name("llama-2-7b")


def test_llama2_7b_fp16_weights():
    w = inference.weight_memory(LLAMA2_7B, "fp16")
    assert w.exact == pytest.approx(13.48e9, rel=1e-3)  # about 13.5 GB
    assert w.exact / 2**30 == pytest.approx(12.55, abs=0.01)  # 12.55 GiB
    assert w.rule_of_thumb == pytest.approx(1.2 * w.exact)
    sizes = {p: inference.weight_memory(LLAMA2_7B, p).exact for p in ("fp32", "bf16", "int8", "int4")}
    assert sizes["fp32"] == 2 * sizes["bf16"] == 4 * sizes["int8"] == 8 * sizes["int4"]


def test_llama2_7b_kv_cache_is_2_gib_at_4096_tokens():
    assert inference.kv_cache_bytes_per_token(LLAMA2_7B, 2) == 512 * 1024
    assert inference.kv_cache_bytes(LLAMA2_7B, batch=1, context=4096) == 2 * 2**30
    # Grouped-query attention shrinks it by n_head / n_kv_head (Llama-3-8B: 4x fewer per layer-width).
    llama3 = ModelConfig.from_name("llama-3-8b")
    assert inference.kv_cache_bytes_per_token(llama3, 2) == 2 * 32 * 8 * 128 * 2


def test_llama2_7b_decode_bound_on_an_a100():
    bound = inference.decode_bound(LLAMA2_7B, bandwidth=1.7e12, peak_flops=312e12, precision="bf16")
    assert bound.tokens_per_s == pytest.approx(127, rel=0.02)
    assert bound.bound == "memory"
    assert bound.tokens_per_s > 105  # gpt-fast measured 105 tokens/s: below the bound, as it must be
    # A long context adds the KV cache to every step's reads.
    long = inference.decode_bound(LLAMA2_7B, bandwidth=1.7e12, peak_flops=312e12, context=4096)
    assert long.bytes_per_step == pytest.approx(bound.bytes_per_step + 2 * 2**30)
    # A big batch turns decoding compute bound.
    big = inference.decode_bound(LLAMA2_7B, bandwidth=1.7e12, peak_flops=312e12, batch=2048, context=1)
    assert big.bound == "compute" and big.aggregate_tokens_per_s > 100 * bound.tokens_per_s


def test_prefill_is_compute_bound():
    p = inference.prefill_bound(LLAMA2_7B, prompt_tokens=2048, peak_flops=312e12, bandwidth=2e12)
    assert p.bound == "compute"
    assert p.tokens_per_s < 312e12 / (2 * 6.5e9)


def test_max_batch():
    per_seq = 2 * 2**30
    weights = inference.weight_memory(LLAMA2_7B, "bf16").exact
    n = inference.max_batch(LLAMA2_7B, device_memory=80e9, context=4096)
    assert n == int((80e9 - weights) // per_seq) == 30
    assert inference.max_batch(LLAMA2_7B, device_memory=10e9, context=4096) == 0


@pytest.mark.parametrize("bad", [
    lambda: inference.weight_memory(LLAMA2_7B, "fp8"),
    lambda: inference.kv_cache_bytes(LLAMA2_7B, batch=0, context=10),
    lambda: inference.decode_bound(LLAMA2_7B, bandwidth=0),
    lambda: inference.prefill_bound(LLAMA2_7B, prompt_tokens=0, peak_flops=1e12, bandwidth=1e12),
])
def test_bad_input_is_refused(bad):
    with pytest.raises(ValueError):
        bad()
