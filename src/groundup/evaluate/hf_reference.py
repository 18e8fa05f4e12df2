"""A transformers model and tokenizer equal to a groundup model, to run lm-eval's own HF backend as the peer.

``groundup.interop.hf.to_transformers`` is used when it exists. Until then a Llama-family groundup model
is copied into ``transformers.LlamaForCausalLM`` here (fused qkv and gate/up split; RoPE already uses
the half-split layout Llama checkpoints use): enough for the parity test and the throughput benchmark.
"""

from __future__ import annotations

import torch


def to_transformers(model):
    try:
        from groundup.interop.hf import to_transformers as interop_to_transformers
    except ImportError:
        return llama_copy(model)
    return interop_to_transformers(model)


@torch.no_grad()
def llama_copy(model):
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    if c.family != "llama" or c.bias or c.qkv_bias:
        raise ValueError(f"only a bias-free Llama-family model can be copied here, got {c.name} ({c.family})")
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.mlp_hidden, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.kv_heads, max_position_embeddings=c.block_size,
        rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=c.tie_embeddings,
        attention_bias=False, mlp_bias=False, head_dim=c.head_dim, bos_token_id=None, eos_token_id=None,
        pad_token_id=None))
    hd, nh, nkv = c.head_dim, c.n_head, c.kv_heads
    hf.model.embed_tokens.weight.copy_(model.tok_embeddings.weight)
    for block, layer in zip(model.blocks, hf.model.layers, strict=True):
        q, k, v = block.attn.qkv.weight.split((nh * hd, nkv * hd, nkv * hd), dim=0)
        layer.self_attn.q_proj.weight.copy_(q)
        layer.self_attn.k_proj.weight.copy_(k)
        layer.self_attn.v_proj.weight.copy_(v)
        layer.self_attn.o_proj.weight.copy_(block.attn.proj.weight)
        gate, up = block.mlp.fc.weight.chunk(2, dim=0)
        layer.mlp.gate_proj.weight.copy_(gate)
        layer.mlp.up_proj.weight.copy_(up)
        layer.mlp.down_proj.weight.copy_(block.mlp.proj.weight)
        layer.input_layernorm.weight.copy_(block.attn_norm.weight)
        layer.post_attention_layernorm.weight.copy_(block.mlp_norm.weight)
    hf.model.norm.weight.copy_(model.final_norm.weight)
    if not c.tie_embeddings:
        hf.lm_head.weight.copy_(model.lm_head.weight)
    return hf.eval()


def hf_tokenizer(tokenizer_file):
    """The model dir's tokenizer.json as a transformers fast tokenizer (EOS as lm-eval's prefix token)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file))
    from groundup.tokenizer import Tokenizer

    eos = Tokenizer.from_file(tokenizer_file).eos_id
    if eos is not None:
        tok.eos_token = tok.convert_ids_to_tokens(eos)
    return tok
