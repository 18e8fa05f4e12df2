"""Latent attention (and DeepSeek-V3's latent attention with experts) through the one decode path: the cache holds
the latents, cached decoding gives the plain forward's logits and greedy tokens, rows are alike at any batch, the
engine batches requests without changing them."""

from __future__ import annotations

import pytest
import torch

from groundup.infer.decode import Decoder
from groundup.infer.engine import Engine, Request
from groundup.infer.sampling import SamplingParams
from groundup.model import transformer
from groundup.model.config import ModelConfig
from groundup.model.transformer import Transformer
from groundup.plan.inference import kv_cache_bytes_per_token

GREEDY = SamplingParams(temperature=0, max_new_tokens=16, stop_at_eos=False)
LATENT = dict(attention="mla", kv_lora_rank=24, qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=16)


def mla_config(**changes) -> ModelConfig:
    """A tiny latent-attention Llama (no query latent, as DeepSeek-V2-Lite)."""
    return ModelConfig.llama(**{**dict(vocab_size=300, block_size=128, n_layer=2, n_head=4, n_embd=64,
                                       init_std=0.2, **LATENT), **changes})


def deepseek_config(**changes) -> ModelConfig:
    """DeepSeek-V3's shape at a tiny size: query latent, YaRN, a dense layer, then sigmoid-routed grouped experts
    with a shared one and bias balancing."""
    return ModelConfig.from_name("deepseek-v3", **{**dict(
        vocab_size=300, block_size=128, n_layer=3, n_head=4, n_embd=64, intermediate_size=96, q_lora_rank=32,
        moe_experts=8, moe_top_k=2, moe_hidden=24, moe_groups=4, moe_group_top_k=2, moe_dense_layers=1,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "mscale": 1.0,
                      "mscale_all_dim": 1.0},
        init_std=0.2, **LATENT), **changes})


def build(config: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    for module in model.modules():  # a moved score correction, so that the choice of experts depends on it
        if hasattr(module, "expert_bias"):
            module.expert_bias.normal_(0, 0.05)
    return model


def greedy_by_full_forward(model: Transformer, ids: list[int], n: int) -> list[int]:
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[-n:]


@pytest.fixture(scope="module", params=["mla", "deepseek"])
def model(request) -> Transformer:
    return build(mla_config() if request.param == "mla" else deepseek_config())


def test_the_cache_keeps_the_latent_and_is_smaller_by_the_ratio_of_the_shapes():
    """Per token and layer the cache holds kv_lora_rank + qk_rope_head_dim values, against 2·n_head·head_dim for
    multi-head attention of the same heads: 2·4·16 / (24 + 8) = 4 times fewer bytes, and what the planner says."""
    mla = mla_config()
    mha = mla_config(attention="mha")
    latent, full = Decoder(build(mla), num_slots=3).cache, Decoder(build(mha), num_slots=3).cache
    assert latent.k.shape == (2, 4, 1, 128, 24) and latent.v.shape == (2, 4, 1, 128, 8)
    ratio = (2 * mha.n_head * mha.head_dim) / (mla.kv_lora_rank + mla.qk_rope_head_dim)
    assert ratio == 4.0
    assert full.nbytes == ratio * latent.nbytes
    assert latent.nbytes == 4 * 128 * kv_cache_bytes_per_token(mla, bytes_per_value=4)  # 3 slots and scratch
    assert full.nbytes == 4 * 128 * kv_cache_bytes_per_token(mha, bytes_per_value=4)
    v3 = ModelConfig.from_name("deepseek-v3")
    assert kv_cache_bytes_per_token(v3) == 61 * (512 + 64) * 2


@pytest.mark.parametrize("layout", ["plain", "transposed", "packed"])
def test_decoding_gives_the_full_forward_logits(model, layout, monkeypatch):
    """Prefill (decompressed latents, 70 tokens) and one-token decode steps (the absorbed form, reading the
    latents) among other rows give each position the logits of the plain forward over the whole sequence,
    whichever layout the decode view keeps kv_up's weight in."""
    if layout == "packed" and not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    absorbed = []
    original = transformer.LatentAttention.absorbed
    monkeypatch.setattr(transformer.LatentAttention, "absorbed",
                        lambda self, *args: absorbed.append(1) or original(self, *args))
    ids = torch.randint(0, 300, (1, 78), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids)[0]  # (T, V)
    decoder = Decoder(model, num_slots=4, layout=layout)
    prefill = decoder.prefill(2, ids[0, :70].tolist(), all_positions=True)  # > ABSORBED_ROWS: decompressed
    assert not absorbed
    torch.testing.assert_close(prefill, reference[:70], atol=1e-4, rtol=1e-4)
    for t in range(70, 78):
        logits = decoder.rows([0, 1, 2, 3], [0, 0, t, 0], [0, 0, int(ids[0, t]), 0])
        torch.testing.assert_close(logits[2], reference[t], atol=1e-4, rtol=1e-4)
    assert len(absorbed) == 8 * model.config.n_layer


def test_decode_rows_are_alike_at_any_batch(model):
    """A row's logits are bit-identical whatever the other rows (from the padded row count up), and as one of
    several rows of its slot (a speculative verification)."""
    decoder = Decoder(model, num_slots=8)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (8,), generator=gen).tolist()
    starts = torch.randint(0, 30, (8,), generator=gen).tolist()
    for slot in range(8):
        decoder.prefill(slot, torch.randint(0, 300, (30,), generator=gen).tolist())
    full = decoder.rows(list(range(8)), starts, ids)
    for n in sorted({decoder.pad_rows(k) for k in range(1, 8)}):
        part = decoder.rows(list(range(n)), starts[:n], ids[:n])
        assert torch.equal(part, full[:n]), f"rows differ at a batch of {n}"
    verify = decoder.rows([5, 5, 7], [starts[5], starts[5] + 1, starts[7]], [ids[5], 11, ids[7]])
    assert torch.equal(verify[0], full[5]) and torch.equal(verify[2], full[7])


def test_the_engine_batches_requests_without_changing_them(model):
    """Greedy tokens equal greedy decoding by the plain forward; five requests at once, in three slots (some
    wait and join as others leave), give bit-identical tokens and log-probabilities to each alone."""
    prompts = [[5, 17, 42, 99, 3], [250, 7, 64], [1, 2, 3, 4, 5, 6, 7, 8], [77], [120, 121, 5, 9]]
    params = [SamplingParams(temperature=0, max_new_tokens=6 + 2 * i, stop_at_eos=False) for i in range(5)]
    engine = Engine(model, None, max_seqs=3, threaded=False)
    alone = [engine.generate(p, q, logprobs=0)[0] for p, q in zip(prompts, params, strict=True)]
    assert alone[0].token_ids == greedy_by_full_forward(model, prompts[0], params[0].max_new_tokens)
    assert len(set(alone[4].token_ids)) > 2  # a varied sequence, so that a cache bug would show
    events: dict[int, list] = {i: [] for i in range(5)}
    for i in range(5):
        engine.submit(Request(prompt_ids=prompts[i], params=params[i], logprobs=0, on_event=events[i].append))
    while not all(e and e[-1].finish_reason for e in events.values()):
        engine.step()
    for i in range(5):
        tokens = [t for e in events[i] for t in e.token_ids]
        logprobs = [lp.logprob for e in events[i] for lp in e.logprobs]
        assert tokens == alone[i].token_ids, f"request {i} changed in a batch"
        assert logprobs == [lp.logprob for lp in alone[i].logprobs]


def test_a_quantized_latent_model_decompresses_and_decodes_its_own_greedy_tokens():
    """With kv_up quantized (no float weight to absorb), decode steps decompress the latents instead: greedy
    tokens through the engine's path are the quantized model's own."""
    from groundup.infer.generate import generate_tokens
    from groundup.model.quant import QuantConfig, quantize_model

    model = quantize_model(build(deepseek_config()), QuantConfig(method="int8"))
    prompt = [5, 17, 42, 99, 3]
    assert list(generate_tokens(model, prompt, GREEDY)) == greedy_by_full_forward(model, prompt, 16)
