"""Mixture-of-experts interop: Mixtral, OLMoE and Qwen2-MoE to and from transformers (logits within 1e-4 both
ways, in memory and through folders), the layouts that do not map, GGUF in the Mixtral layout, and MoE
checkpoints loaded into a dense shape."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from interop_helpers import MIXED_TEXT, random_model

from groundup.interop.hf import (
    UnsupportedModelError,
    config_from_hf,
    export_hf,
    from_transformers,
    hf_param_names,
    import_hf,
    moe_family,
    to_transformers,
)
from groundup.model.config import ModelConfig
from groundup.model.io import load_model_dir, load_model_weights, save_model_dir
from groundup.model.transformer import Transformer

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
SHAPE = dict(vocab_size=320, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             rms_norm_eps=1e-6, max_position_embeddings=64, tie_word_embeddings=False)
FAMILIES = {
    "mixtral": lambda **kw: transformers.MixtralConfig(**SHAPE, intermediate_size=48, num_local_experts=4,
                                                       num_experts_per_tok=2, **kw),
    "olmoe": lambda **kw: transformers.OlmoeConfig(**SHAPE, intermediate_size=48, num_experts=4,
                                                   num_experts_per_tok=2, **kw),
    "olmoe-normalized": lambda **kw: transformers.OlmoeConfig(**SHAPE, intermediate_size=48, num_experts=4,
                                                              num_experts_per_tok=2, norm_topk_prob=True, **kw),
    # Qwen1.5-MoE's shape in small: a gated shared expert of 2 experts' width, and a dense first layer.
    "qwen2_moe": lambda **kw: transformers.Qwen2MoeConfig(**SHAPE, intermediate_size=64, moe_intermediate_size=24,
                                                          shared_expert_intermediate_size=48, num_experts=4,
                                                          num_experts_per_tok=2, mlp_only_layers=[0], **kw),
}
CLASSES = {"mixtral": "MixtralForCausalLM", "olmoe": "OlmoeForCausalLM", "olmoe-normalized": "OlmoeForCausalLM",
           "qwen2_moe": "Qwen2MoeForCausalLM"}


def random_hf(config):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def max_diff(ours, theirs, T: int = 40) -> float:
    idx = torch.randint(0, ours.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours(idx) - theirs(input_ids=idx).logits).abs().max().item()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_moe_families_to_and_from_transformers(family):
    hf = random_hf(FAMILIES[family]())
    model = from_transformers(hf)
    cfg = model.config
    assert (cfg.moe_experts, cfg.moe_top_k) == (4, 2)
    assert cfg.moe_normalize == (family in ("mixtral", "olmoe-normalized"))
    if family.startswith("olmoe"):
        assert cfg.qk_norm and cfg.qk_norm_scope == "all"
    if family == "qwen2_moe":
        assert (cfg.moe_shared_experts, cfg.moe_hidden, cfg.moe_dense_layers, cfg.mlp_hidden) == (2, 24, 1, 64)
        assert cfg.moe_shared_gate and cfg.qkv_bias
    assert max_diff(model, hf) <= TOLERANCE
    back = to_transformers(model)
    assert type(back).__name__ == CLASSES[family]
    assert max_diff(model, back) <= TOLERANCE
    # every groundup tensor has an HF name
    assert set(hf_param_names(cfg)) >= set(model.state_dict())


def test_routing_is_what_is_compared():
    """The parity above can fail: renormalizing OLMoE's top-k weights, or one expert's gate and up rows swapped,
    moves the logits far past the tolerance."""
    hf = random_hf(FAMILIES["olmoe"]())
    model = from_transformers(hf)
    assert max_diff(Transformer_like(model, moe_normalize=True), hf) > 1e-2
    swapped = Transformer_like(model)
    with torch.no_grad():
        fc = swapped.blocks[1].mlp.experts.fc
        fc[2] = fc[2].roll(fc.shape[1] // 2, dims=0)
    assert max_diff(swapped, hf) > 1e-2


def Transformer_like(model: Transformer, **changes) -> Transformer:  # noqa: N802 (reads as the class it builds)
    copy = Transformer(dataclasses.replace(model.config, **changes))
    copy.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    return copy.eval()


def hf_folder(family: str, path, tokenizer_dir, **kw):
    hf = random_hf(FAMILIES[family](**kw))
    hf.save_pretrained(path)
    shutil.copyfile(tokenizer_dir / "tokenizer.json", path / "tokenizer.json")
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return hf


@pytest.mark.parametrize("family", ["mixtral", "olmoe", "qwen2_moe"])
def test_moe_folders_import_and_export(family, spine_tokenizer, tmp_path):
    hf = hf_folder(family, tmp_path / "hf", spine_tokenizer)
    # on disk every expert is its own tensor (Mixtral: block_sparse_moe.experts.{e}.w1/w2/w3)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        assert any(".experts.3." in k for k in f.keys())  # noqa: SIM118 (safe_open is not iterable)
    model_dir = import_hf(tmp_path / "hf", tmp_path / "model")
    model, tokenizer = load_model_dir(model_dir)
    ids = torch.tensor([tokenizer.encode(MIXED_TEXT)[:64]])
    with torch.no_grad():
        assert (model(ids) - hf(input_ids=ids).logits).abs().max().item() <= TOLERANCE
    out = export_hf(model_dir, tmp_path / "exported")
    assert json.loads((out / "config.json").read_text())["model_type"] == family
    back = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    with torch.no_grad():
        assert (model(ids) - back(input_ids=ids).logits).abs().max().item() <= TOLERANCE


def test_mixtral_sliding_window_comes_along():
    hf = random_hf(FAMILIES["mixtral"](sliding_window=8))
    model = from_transformers(hf)
    assert model.config.sliding_window == 8
    assert max_diff(model, hf, 32) <= TOLERANCE
    assert to_transformers(model).config.sliding_window == 8


def test_missing_expert_tensor_is_named(spine_tokenizer, tmp_path):
    hf_folder("mixtral", tmp_path / "hf", spine_tokenizer)
    from safetensors.torch import load_file, save_file

    path = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(str(path))
    del tensors["model.layers.1.block_sparse_moe.experts.2.w3.weight"]
    save_file(tensors, str(path))
    with pytest.raises(UnsupportedModelError, match=r"missing model\.layers\.1\.mlp\.experts\.2\.up_proj\.weight"):
        import_hf(tmp_path / "hf", tmp_path / "model")


QWEN = dict(model_type="qwen2_moe", hidden_size=32, num_attention_heads=4, num_hidden_layers=4,
            max_position_embeddings=64, vocab_size=64, intermediate_size=64, moe_intermediate_size=16,
            shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2)


@pytest.mark.parametrize(("changes", "message"), [
    ({"decoder_sparse_step": 2}, r"decoder_sparse_step=2 makes layers \[0, 2\] dense"),
    ({"mlp_only_layers": [1]}, r"mlp_only_layers=\[1\]"),
    ({"shared_expert_intermediate_size": 24}, "shared_expert_intermediate_size 24"),
])
def test_qwen2_moe_layouts_that_do_not_map(changes, message):
    with pytest.raises(UnsupportedModelError, match=message):
        config_from_hf({**QWEN, **changes})


def test_qwen2_moe_dense_prefix_maps():
    config, layout = config_from_hf({**QWEN, "mlp_only_layers": [0, 1]})
    assert (config.moe_dense_layers, layout.moe) == (2, "qwen2_moe")
    config, _ = config_from_hf({**QWEN, "num_hidden_layers": 2, "decoder_sparse_step": 2})  # layer 0 dense, 1 MoE
    assert config.moe_dense_layers == 1


def test_olmoe_clip_qkv_is_refused():
    olmoe = {**QWEN, "model_type": "olmoe", "clip_qkv": 8.0}
    with pytest.raises(UnsupportedModelError, match="clip_qkv=8.0"):
        config_from_hf(olmoe)


MOE = dict(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=32,
           moe_experts=4, moe_top_k=2)


@pytest.mark.parametrize(("changes", "message"), [
    ({"moe_score": "sigmoid"}, "moe_score='sigmoid'"),
    ({"moe_groups": 2}, "moe_groups=2"),
    ({"moe_shared_experts": 1}, r"moe_shared_gate=False \(needs True\)"),
    ({"moe_normalize": False}, r"moe_normalize=False \(needs True\).*MixtralForCausalLM"),
    ({"moe_dense_layers": 1}, r"moe_dense_layers=1 \(needs 0\)"),
    ({"qk_norm": True}, "qk_norm_scope='head'"),
])
def test_groundup_moe_shapes_without_an_hf_class(changes, message):
    with pytest.raises(UnsupportedModelError, match=message):
        moe_family(ModelConfig.llama(**MOE, **changes))


def test_groundup_moe_shapes_pick_their_family():
    assert moe_family(ModelConfig.llama(**MOE)) == "mixtral"
    assert moe_family(ModelConfig.llama(**MOE, qk_norm=True, qk_norm_scope="all", moe_normalize=False)) == "olmoe"
    qwen = ModelConfig.llama(**MOE, moe_shared_experts=2, moe_shared_gate=True, moe_dense_layers=1, qkv_bias=True)
    assert moe_family(qwen) == "qwen2_moe"
    # exported from groundup (not imported): q/k/v biases it lacks are written as zeros, the function the same
    model = random_model(dataclasses.replace(qwen, qkv_bias=False))
    assert max_diff(model, to_transformers(model), 20) <= TOLERANCE


@pytest.mark.parametrize(("preset", "family"), [("mixtral-8x7b", "mixtral"), ("olmoe-1b-7b", "olmoe"),
                                               ("qwen1.5-moe-a2.7b", "qwen2_moe")])
def test_presets_export_as_their_published_class(preset, family):
    """The config.json written for each MoE preset builds, in transformers on the meta device, a model with the
    preset's (published) parameter count, and reads back as the same groundup shape."""
    from groundup.interop.hf import hf_config_dict
    from groundup.model.transformer import count_parameters

    config = ModelConfig.from_name(preset)
    assert moe_family(config) == family
    fields = hf_config_dict(config)
    hf_config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(hf_config)
    assert sum(p.numel() for p in hf.parameters()) == count_parameters(config)
    back, _ = config_from_hf(hf_config_dict(config))
    changed = {k for k in dataclasses.asdict(config) if getattr(back, k) != getattr(config, k)}
    assert back.kv_heads == config.kv_heads  # n_kv_head None reads back as the number
    assert changed <= {"name", "n_kv_head", "moe_z_loss_coef"}  # the z-loss weight is groundup's training setting


# ---------------------------------------------------------------------------- dense <-> MoE checkpoints


def test_moe_checkpoint_into_a_dense_shape_names_moe_experts(spine_tokenizer, tmp_path):
    moe = ModelConfig.llama(**MOE)
    save_model_dir(tmp_path / "moe", random_model(moe), tokenizer_file=spine_tokenizer, stage="test", config={})
    load_model_dir(tmp_path / "moe")  # the model dir itself loads (its routing buffers start at zero)
    weights = tmp_path / "moe" / "model.safetensors"
    dense = Transformer(dataclasses.replace(moe, moe_experts=0))
    with pytest.raises(ValueError, match=r"mixture-of-experts model \(4 experts .*moe_experts=0\): set moe_experts=4"):
        load_model_weights(dense, weights)
    with pytest.raises(ValueError, match="holds 4 experts per layer, but this model shape has moe_experts=8"):
        load_model_weights(Transformer(dataclasses.replace(moe, moe_experts=8)), weights)
    with pytest.raises(ValueError, match="moe_dense_layers=1"):
        load_model_weights(Transformer(dataclasses.replace(moe, moe_dense_layers=1)), weights)
    # and the reverse: a dense checkpoint into an MoE shape
    save_model_dir(tmp_path / "dense", random_model(dense.config), tokenizer_file=spine_tokenizer, stage="test",
                   config={})
    with pytest.raises(ValueError, match="holds a dense model .* moe_experts=4: set moe_experts=0"):
        load_model_weights(Transformer(moe), tmp_path / "dense" / "model.safetensors")


# ---------------------------------------------------------------------------- GGUF, Mixtral layout


@pytest.fixture(scope="module")
def mixtral_dir(spine_tokenizer, tmp_path_factory):
    config = ModelConfig.llama(**{**MOE, "vocab_size": 320, "n_embd": 64})
    path = tmp_path_factory.mktemp("moe_gguf") / "model"
    return save_model_dir(path, random_model(config), tokenizer_file=spine_tokenizer, stage="test", config={})


def test_gguf_mixtral_layout_reads_back(mixtral_dir, tmp_path):
    pytest.importorskip("gguf")
    from groundup.interop.gguf import export_gguf, gguf_tensor_types, read_gguf, verify_gguf

    path = export_gguf(mixtral_dir, tmp_path / "f32", dtype="f32")
    metadata, tensors = read_gguf(path)
    assert metadata["general.architecture"] == "llama"
    assert (metadata["llama.expert_count"], metadata["llama.expert_used_count"]) == (4, 2)
    assert metadata["llama.feed_forward_length"] == 32
    model, _ = load_model_dir(mixtral_dir)
    experts = model.blocks[1].mlp.experts
    # llama.cpp's stacked expert tensors, (E, H, C) gate and up, (E, C, H) down, in PyTorch order
    assert np_equal(tensors["blk.1.ffn_gate_exps.weight"], experts.fc[:, :32])
    assert np_equal(tensors["blk.1.ffn_up_exps.weight"], experts.fc[:, 32:])
    assert np_equal(tensors["blk.1.ffn_down_exps.weight"], experts.proj)
    assert np_equal(tensors["blk.1.ffn_gate_inp.weight"], model.blocks[1].mlp.router.weight)
    assert not any(".ffn_up.weight" in k or "ffn_gate.weight" in k for k in tensors)  # no dense MLP left
    # every tensor exact and the logits of the model rebuilt from the file equal groundup's
    assert verify_gguf(mixtral_dir, path, texts=[MIXED_TEXT], dtype="f32")["max_logit_diff"] <= TOLERANCE
    q8 = export_gguf(mixtral_dir, tmp_path / "q8", dtype="q8_0")
    types = gguf_tensor_types(q8)
    assert types["blk.0.ffn_gate_inp.weight"] == "F32" and types["blk.0.ffn_down_exps.weight"] == "Q8_0"
    verify_gguf(mixtral_dir, q8, texts=[MIXED_TEXT], dtype="q8_0")


def np_equal(array, tensor) -> bool:
    return array.shape == tuple(tensor.shape) and bool((torch.from_numpy(array.copy()) == tensor.detach()).all())


def test_gguf_refuses_other_moe_layouts(spine_tokenizer, mixtral_dir, tmp_path):
    pytest.importorskip("gguf")
    from groundup.interop.gguf import export_gguf

    olmoe = ModelConfig.llama(**{**MOE, "vocab_size": 320}, qk_norm=True, qk_norm_scope="all")
    save_model_dir(tmp_path / "olmoe", random_model(olmoe), tokenizer_file=spine_tokenizer, stage="test", config={})
    with pytest.raises(UnsupportedModelError, match="Mixtral layout only .* this shape is olmoe"):
        export_gguf(tmp_path / "olmoe", tmp_path / "out")
    with pytest.raises(UnsupportedModelError, match="'q4_k_m' is written for dense models only"):
        export_gguf(mixtral_dir, tmp_path / "q4km", dtype="q4_k_m")
