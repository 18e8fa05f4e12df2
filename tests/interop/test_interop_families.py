"""The dense families users import: scaled RoPE, MLP-only biases, sliding windows, Qwen3; logits against
transformers past the original context and past the window."""

from __future__ import annotations

import pytest
import torch

from groundup.infer.generate import generate_tokens
from groundup.infer.sampling import SamplingParams
from groundup.interop.hf import UnsupportedModelError, config_from_hf, from_transformers, to_transformers

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
SHAPE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=False)


def random_hf(config):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def max_diff(ours, theirs, T: int) -> float:
    idx = torch.randint(0, 96, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours(idx) - theirs(input_ids=idx).logits).abs().max().item()


ROPE = {
    "llama3": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16}, 64, 60),
    "linear": ({"rope_type": "linear", "factor": 4.0}, 64, 60),
    "dynamic": ({"rope_type": "dynamic", "factor": 4.0}, 16, 60),  # 16 is its original context
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}, 64, 60),
}


@pytest.mark.parametrize("kind", list(ROPE))
def test_scaled_rope_matches_transformers_past_the_original_context(kind):
    params, max_positions, T = ROPE[kind]
    hf = random_hf(transformers.LlamaConfig(**SHAPE, max_position_embeddings=max_positions,
                                            rope_parameters={**params, "rope_theta": 10000.0}))
    model = from_transformers(hf)
    assert model.config.rope_scaling["rope_type"] == kind
    assert T > 16 and model.config.block_size >= T
    assert max_diff(model, hf, T) <= TOLERANCE
    # and back out: transformers reads the exported scaling and computes the same logits
    assert max_diff(model, to_transformers(model), T) <= TOLERANCE


def test_scaled_rope_differs_from_plain():
    """The scaling is applied: the same weights with plain RoPE give other logits past the original context."""
    params, max_positions, T = ROPE["llama3"]
    hf = random_hf(transformers.LlamaConfig(**SHAPE, max_position_embeddings=max_positions,
                                            rope_parameters={**params, "rope_theta": 10000.0}))
    plain = random_hf(transformers.LlamaConfig(**SHAPE, max_position_embeddings=max_positions,
                                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    assert max_diff(from_transformers(hf), plain, T) > 1e-2


def test_llama_with_mlp_bias_only():
    hf = random_hf(transformers.LlamaConfig(**SHAPE, max_position_embeddings=32, mlp_bias=True,
                                            attention_bias=False))
    model = from_transformers(hf)
    assert model.config.bias and max_diff(model, hf, 20) <= TOLERANCE


def mistral(window: int = 8):
    return random_hf(transformers.MistralConfig(**SHAPE, max_position_embeddings=256, sliding_window=window))


def greedy_pair(model, hf, prompt: list[int], n: int) -> tuple[list[int], list[int]]:
    params = SamplingParams(temperature=0.0, max_new_tokens=n, stop_at_eos=False)
    ours = list(generate_tokens(model, prompt, params))
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         pad_token_id=0)[0, len(prompt):].tolist()
    return ours, theirs


def test_sliding_window_matches_transformers_at_four_windows():
    hf = mistral(8)
    model = from_transformers(hf)
    assert (model.config.sliding_window, model.config.block_size) == (8, 256)
    assert max_diff(model, hf, 32) <= TOLERANCE
    # Greedy decoding through the KV cache, past 4 windows, token for token.
    ours, theirs = greedy_pair(model, hf, list(range(3, 13)), 24)
    assert ours == theirs
    # A long prompt through the rolling cache (128 places for 160 positions; the prefill in two pieces). Checked
    # against transformers' forward on the whole sequence (teacher-forced): its generate() with a prompt longer
    # than the window picks other tokens than its own forward does (transformers 5.25).
    prompt = torch.randint(0, 96, (130,), generator=torch.Generator().manual_seed(2)).tolist()
    params = SamplingParams(temperature=0.0, max_new_tokens=30, stop_at_eos=False)
    ours = list(generate_tokens(model, prompt, params))
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor([prompt + ours[:-1]])).logits[0, len(prompt) - 1:].argmax(-1).tolist()
    assert ours == theirs
    # The window matters: a full-attention model with the same weights disagrees past it.
    model.config.sliding_window = None
    assert max_diff(model, hf, 32) > 1e-3


def test_sliding_window_exports_as_mistral():
    model = from_transformers(mistral(8))
    back = to_transformers(model)
    assert back.config.model_type == "mistral" and back.config.sliding_window == 8
    assert max_diff(model, back, 32) <= TOLERANCE


def test_qwen3_with_its_own_head_size():
    hf = random_hf(transformers.Qwen3Config(**SHAPE, head_dim=16, max_position_embeddings=64))
    model = from_transformers(hf)
    assert model.config.qk_norm and model.config.head_dim == 16
    assert max_diff(model, hf, 40) <= TOLERANCE


@pytest.mark.parametrize(("fields", "named"), [
    ({"model_type": "gemma"}, "model_type 'gemma'"),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "rope_type 'longrope'"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}}, "low_freq_factor"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
     "layer_types mixes"),
])
def test_layouts_that_do_not_map_are_refused_by_field(fields, named):
    hf = {"model_type": "llama", **SHAPE, "max_position_embeddings": 64, **fields}
    with pytest.raises(UnsupportedModelError, match=named):
        config_from_hf(hf)
