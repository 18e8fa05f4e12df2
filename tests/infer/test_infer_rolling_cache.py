"""A sliding window's rolling KV cache: fewer places than positions, the same tokens as full recomputation."""

from __future__ import annotations

import torch

from groundup.infer.decode import Decoder
from groundup.infer.generate import generate_tokens
from groundup.infer.kv_cache import SlotKVCache
from groundup.infer.sampling import SamplingParams
from groundup.model.config import ModelConfig
from groundup.model.transformer import Transformer


def tiny(window: int | None = 8) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig.llama(vocab_size=64, block_size=320, n_layer=2, n_head=2, n_embd=32,
                               sliding_window=window)
    model = Transformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def greedy_by_recompute(model: Transformer, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def test_rolling_cache_holds_a_window_not_the_context():
    cache = SlotKVCache(tiny().config, num_slots=2)
    assert cache.rolling and cache.k.shape[3] == 128 < cache.max_len == 320
    assert cache.max_tokens_per_forward == 121
    assert not SlotKVCache(tiny(None).config, num_slots=2).rolling


def test_rolling_cache_decodes_as_full_recomputation():
    model = tiny()
    prompt = torch.randint(0, 64, (140,), generator=torch.Generator().manual_seed(1)).tolist()
    params = SamplingParams(temperature=0.0, max_new_tokens=60, stop_at_eos=False)
    ours = list(generate_tokens(model, prompt, params))
    assert ours == greedy_by_recompute(model, prompt, 60)


def test_rolling_prefill_logits_match_the_forward():
    model = tiny()
    ids = torch.randint(0, 64, (300,), generator=torch.Generator().manual_seed(3)).tolist()
    decoder = Decoder(model, num_slots=1)
    got = decoder.prefill(0, ids, all_positions=True)  # (T, V), in three pieces
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0]
    assert torch.allclose(got, want, atol=1e-4)
