"""PEFT loads groundup's adapter over the same base in transformers and gives the same logits.

groundup.interop.hf (to_transformers) is not on this branch yet, so the transformers twin of the base
is built here from the documented name map; the adapter's names come from groundup.finetune.peft_format.
"""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import tiny_config

from groundup.model.lora import LoRAConfig, LoRALinear, apply_lora
from groundup.model.transformer import Transformer

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def hf_twin(model: Transformer):
    """A transformers model with the weights of ``model`` (Llama or GPT-2 shape)."""
    c = model.config
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if c.family == "llama":
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.mlp_hidden,
            num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.kv_heads,
            max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_embeddings,
            attention_bias=False, mlp_bias=False))
        q, kv = c.n_head * c.head_dim, c.kv_heads * c.head_dim
        out = {"model.embed_tokens.weight": sd["tok_embeddings.weight"], "model.norm.weight": sd["final_norm.weight"],
               "lm_head.weight": sd["lm_head.weight"]}
        for i in range(c.n_layer):
            b, h = f"blocks.{i}", f"model.layers.{i}"
            qkv = sd[f"{b}.attn.qkv.weight"]
            gate, up = sd[f"{b}.mlp.fc.weight"].chunk(2)
            out.update({f"{h}.input_layernorm.weight": sd[f"{b}.attn_norm.weight"],
                        f"{h}.post_attention_layernorm.weight": sd[f"{b}.mlp_norm.weight"],
                        f"{h}.self_attn.q_proj.weight": qkv[:q], f"{h}.self_attn.k_proj.weight": qkv[q : q + kv],
                        f"{h}.self_attn.v_proj.weight": qkv[q + kv :],
                        f"{h}.self_attn.o_proj.weight": sd[f"{b}.attn.proj.weight"],
                        f"{h}.mlp.gate_proj.weight": gate, f"{h}.mlp.up_proj.weight": up,
                        f"{h}.mlp.down_proj.weight": sd[f"{b}.mlp.proj.weight"]})
    else:
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=c.vocab_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head, n_positions=c.block_size,
            layer_norm_epsilon=c.norm_eps, activation_function="gelu_new"))
        out = {"transformer.wte.weight": sd["tok_embeddings.weight"], "transformer.wpe.weight": sd["pos_embeddings.weight"],
               "transformer.ln_f.weight": sd["final_norm.weight"], "transformer.ln_f.bias": sd["final_norm.bias"],
               "lm_head.weight": sd["lm_head.weight"]}
        for i in range(c.n_layer):
            b, h = f"blocks.{i}", f"transformer.h.{i}"
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[f"{h}.{theirs}.weight"], out[f"{h}.{theirs}.bias"] = sd[f"{b}.{ours}.weight"], sd[f"{b}.{ours}.bias"]
            for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"),
                                 ("mlp.proj", "mlp.c_proj")):
                out[f"{h}.{theirs}.weight"] = sd[f"{b}.{ours}.weight"].t().contiguous()  # Conv1D: (in, out)
                out[f"{h}.{theirs}.bias"] = sd[f"{b}.{ours}.bias"]
    missing, unexpected = hf.load_state_dict(out, strict=False)
    assert not unexpected and all("attn.bias" in k or "masked_bias" in k for k in missing), (missing, unexpected)
    return hf.eval()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_peft_loads_the_adapter_and_matches_groundup(family, tmp_path):
    from groundup.finetune.peft_format import save_peft_adapter

    torch.manual_seed(0)
    model = Transformer(tiny_config(family, 320)).eval()
    x = torch.randint(0, 320, (2, 24))
    with torch.no_grad():
        base_logits = model(x)
        hf = hf_twin(model)
        assert torch.allclose(hf(x).logits, base_logits, atol=1e-4)  # the twin is the same base model
        cfg = LoRAConfig(enabled=True, rank=4, alpha=8)
        apply_lora(model, cfg)
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.1)
        ours = model(x)
    save_peft_adapter(tmp_path, model, cfg, base_model=None)
    peft_model = peft.PeftModel.from_pretrained(hf, str(tmp_path)).eval()
    with torch.no_grad():
        theirs = peft_model(x).logits
    assert (ours - base_logits).abs().max() > 1e-2  # the adapter matters
    assert torch.allclose(theirs, ours, atol=1e-4), (theirs - ours).abs().max()


def test_peft_loads_a_classifier_adapter_with_its_head(tmp_path):
    from groundup.finetune.classify import add_class_head, class_logits
    from groundup.finetune.peft_format import save_peft_adapter

    torch.manual_seed(0)
    model = Transformer(tiny_config("llama", 320)).eval()
    causal = hf_twin(model)
    hf = transformers.LlamaForSequenceClassification(causal.config.__class__(**{
        **causal.config.to_dict(), "num_labels": 3, "pad_token_id": 0})).eval()
    hf.model.load_state_dict(causal.model.state_dict())
    add_class_head(model, 3)
    cfg = LoRAConfig(enabled=True, rank=4, alpha=8)
    apply_lora(model, cfg, trainable=("lm_head.weight",))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.1)
        x = torch.randint(1, 320, (2, 12))  # no pad id inside: the last token is the last real one
        ours = class_logits(model, x, torch.tensor([12, 12]))
    save_peft_adapter(tmp_path, model, cfg, base_model=None, task_type="SEQ_CLS", extra=("lm_head.weight",))
    peft_model = peft.PeftModel.from_pretrained(hf, str(tmp_path)).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=x).logits
    assert torch.allclose(theirs, ours, atol=1e-4), (theirs - ours).abs().max()
