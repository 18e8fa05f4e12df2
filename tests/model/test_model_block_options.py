"""Block options: QK-norm, ReLU² MLP, parameter-free norms, zero-initialised output projections, a logit soft-cap,
value embeddings, document-causal attention. Each trains,
decodes through the KV cache as its full forward computes, is counted by the planner, stays off in the presets,
and is refused by export with the switch named."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from groundup.infer.decode import Decoder
from groundup.interop.hf import UnsupportedModelError, hf_architecture
from groundup.model.config import PRESETS, ModelConfig
from groundup.model.transformer import Transformer
from groundup.plan.params import count_parameters as planned

OPTIONS = {
    "qk_norm": {"qk_norm": True},
    "relu2": {"mlp": "relu2"},
    "parameter-free norms": {"norm_affine": False},
    "zero-init projections": {"zero_init_proj": True},
    "logit softcap": {"logit_softcap": 15.0},
    "value embeddings": {"value_embeddings": True},
    "value embeddings, 3 layers, mha": {"value_embeddings": True, "n_layer": 3, "n_kv_head": 4},
    "all": {"qk_norm": True, "mlp": "relu2", "norm_affine": False, "zero_init_proj": True, "logit_softcap": 15.0,
            "value_embeddings": True},
    "qk_norm, layernorm": {"qk_norm": True, "norm": "layernorm", "position": "learned", "mlp": "gelu", "bias": True},
}


def build(changes: dict) -> Transformer:
    torch.manual_seed(0)
    base = dict(name="tiny-llama", n_layer=2, n_embd=64, n_head=4, n_kv_head=2, vocab_size=97, block_size=32,
                norm="rmsnorm", position="rope", mlp="swiglu", bias=False)
    return Transformer(ModelConfig(**{**base, **changes}))


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_an_option_learns_one_batch_and_is_counted_by_the_planner(option):
    model = build(OPTIONS[option])
    assert model.num_parameters() == planned(model.config).total
    x = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x).flatten(0, 1), x.roll(-1, 1).flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_an_option_decodes_through_the_cache_as_its_full_forward(option):
    model = build(OPTIONS[option]).eval()
    with torch.no_grad():  # weights off their initial values (zero projections would hide the attention)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, 97, (12,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.inference_mode():
        full = model(torch.tensor([ids]))[0]  # (T, V)
        decoder = Decoder(model, num_slots=1, layout="plain")
        decoder.prefill(0, ids[:8])
        rows = [decoder.rows([0], [t], [ids[t]])[0] for t in range(8, 12)]
    torch.testing.assert_close(torch.stack(rows), full[8:12], atol=1e-4, rtol=1e-4)


def test_the_options_do_what_they_say():
    model = build(OPTIONS["all"])
    block = model.blocks[0]
    assert block.attn.q_norm is not None and block.attn.k_norm.weight is None  # QK-norm, parameter-free
    assert block.attn_norm.weight is None and model.final_norm.weight is None
    assert torch.count_nonzero(block.attn.proj.weight) == 0 and torch.count_nonzero(block.mlp.proj.weight) == 0
    assert torch.count_nonzero(block.attn.qkv.weight) > 0
    assert block.mlp.fc.out_features == 4 * 64  # ReLU²: one up projection, no gate
    h = torch.randn(3, 64)
    assert torch.equal(block.mlp.proj(F.relu(block.mlp.fc(h)).square()), block.mlp(h))


def test_presets_keep_every_option_off():
    # OLMoE has QK-norm in its published shape: the mixture-of-experts presets are the models as published
    for name in [n for n in PRESETS if not ModelConfig.from_name(n).moe_experts]:
        cfg = ModelConfig.from_name(name)
        assert (cfg.qk_norm, cfg.norm_affine, cfg.zero_init_proj) == (False, True, False), name
        assert (cfg.logit_softcap, cfg.value_embeddings) == (None, False), name
        assert cfg.mlp in ("gelu", "swiglu"), name


@pytest.mark.parametrize(("changes", "named"), [
    ({"qk_norm": True}, "qk_norm=True"),
    ({"norm_affine": False}, "norm_affine=False"),
    ({"mlp": "relu2"}, "mlp='relu2'"),
    ({"logit_softcap": 30.0}, "logit_softcap=30.0"),
    ({"value_embeddings": True}, "value_embeddings=True"),
])
def test_export_refuses_a_switch_no_hugging_face_architecture_has(changes, named):
    with pytest.raises(UnsupportedModelError, match=named):
        hf_architecture(build(changes).config)
    assert hf_architecture(build({"zero_init_proj": True}).config) == "llama"  # an initialisation exports


def test_an_unknown_mlp_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="relu2"):
        ModelConfig(mlp="relu3")


def test_a_model_dir_with_every_option_loads_quantizes_and_decodes(spine_tokenizer, tmp_path):
    """Parameter-free norms leave layers without a weight: loading on the meta device, quantizing and the
    engine still work, and the loaded model computes what was saved."""
    from groundup.infer import quantize
    from groundup.infer.generate import generate_tokens
    from groundup.infer.sampling import SamplingParams
    from groundup.model.io import load_model_dir, save_model_dir

    model = build({**OPTIONS["all"], "vocab_size": 320, "zero_init_proj": False}).eval()
    saved = save_model_dir(tmp_path / "model", model, tokenizer_file=spine_tokenizer, stage="test", config={})
    loaded, _ = load_model_dir(saved)
    x = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
    int8 = quantize.run(quantize.Config(model=saved, to="int8", out=tmp_path / "int8"))
    quantized, _ = load_model_dir(int8)
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    assert len(list(generate_tokens(quantized, [1, 2, 3], params))) == 6


def test_the_soft_cap_bounds_the_logits_and_the_fused_loss_follows_it():
    model = build({"logit_softcap": 2.0})
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # raw logits beyond the cap
    x = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(4))
    raw = model.lm_head(model.hidden_states(x))
    capped = model(x)
    assert raw.abs().max() > 4.0 and capped.abs().max() <= 2.0
    torch.testing.assert_close(capped, 2.0 * torch.tanh(raw / 2.0))
    # the fused CPU head + loss (training) against autograd through the capped logits, values and gradients
    targets = x.roll(-1, 1)
    targets[0, :3] = -100
    fused = model(x, targets=targets)
    grads = torch.autograd.grad(fused, [model.lm_head.weight, model.blocks[0].attn.qkv.weight])
    plain = F.cross_entropy(model(x).flatten(0, 1), targets.flatten(), ignore_index=-100)
    expected = torch.autograd.grad(plain, [model.lm_head.weight, model.blocks[0].attn.qkv.weight])
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_value_embeddings_sit_on_alternating_layers_ending_with_the_last_and_start_with_a_gate_of_one():
    model = build({"value_embeddings": True, "n_layer": 5})
    assert [block.attn.value_embedding is not None for block in model.blocks] == [True, False, True, False, True]
    ve = model.blocks[4].attn.value_embedding
    assert ve.embedding.weight.shape == (97, 2 * 16) and torch.count_nonzero(ve.gate.weight) == 0
    x = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(5))
    v = torch.randn(2, 2, 8, 16)
    h = torch.randn(2, 8, 64)
    expected = v + ve.embedding(x).view(2, 8, 2, 16).transpose(1, 2)  # gate 2 * sigmoid(0) = 1
    torch.testing.assert_close(ve(h, x, v), expected)
    before = model(x)
    with torch.no_grad():
        ve.embedding.weight.add_(1.0)
    assert not torch.allclose(model(x), before)  # the values read the table
    assert model.num_parameters(exclude_embeddings=True) == planned(model.config).non_embedding


@pytest.mark.parametrize("changes", [{}, {"value_embeddings": True, "qk_norm": True}])
def test_document_causal_attention_scores_each_packed_document_as_if_alone(changes):
    """With RoPE, attention depends on relative positions only: a document packed after another, masked from
    it by ``segments``, gets the logits it gets alone."""
    model = build(changes).eval()
    g = torch.Generator().manual_seed(6)
    a, b = torch.randint(0, 97, (1, 7), generator=g), torch.randint(0, 97, (1, 9), generator=g)
    packed = torch.cat([a, b], dim=1)
    segments = torch.tensor([[0] * 7 + [1] * 9])
    with torch.no_grad():
        together = model(packed, segments=segments)
        torch.testing.assert_close(together[:, :7], model(a), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(together[:, 7:], model(b), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(packed)[:, 7:], model(b), atol=1e-3)  # unmasked, b sees a
        one_segment = model(packed, segments=torch.zeros_like(segments))
    torch.testing.assert_close(one_segment, model(packed), atol=1e-5, rtol=1e-5)
    loss = model(packed, targets=packed.roll(-1, 1), segments=segments)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="segments"):
        model(packed, segments=segments[:, :5])
