"""Hugging Face parity: groundup logits against transformers' on exported folders and on imported models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from interop_helpers import CONFIGS, MIXED_TEXT, make_config, random_model

from groundup.infer.generate import generate_tokens
from groundup.infer.sampling import SamplingParams
from groundup.interop.hf import (
    UnsupportedModelError,
    export_hf,
    from_transformers,
    hf_param_names,
    import_hf,
    to_transformers,
)
from groundup.model.config import ModelConfig
from groundup.model.io import load_model_dir
from groundup.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4


def logits_diff(model, hf_model, ids: list[int]) -> float:
    idx = torch.tensor([ids])
    with torch.no_grad():
        return (model(idx) - hf_model(input_ids=idx).logits).abs().max().item()


def greedy_ours(model, prompt: list[int], n: int = 20) -> list[int]:
    params = SamplingParams(temperature=0.0, max_new_tokens=n, stop_at_eos=False)
    return list(generate_tokens(model, prompt, params))


def greedy_theirs(hf_model, prompt: list[int], n: int = 20) -> list[int]:
    out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=0, do_sample=False,
                            pad_token_id=0)
    return out[0, len(prompt):].tolist()


def assert_same_greedy(model, hf_model, prompt: list[int]) -> None:
    ours, theirs = greedy_ours(model, prompt), greedy_theirs(hf_model, prompt)
    eos_ids = hf_model.generation_config.eos_token_id
    eos_ids = set(eos_ids) if isinstance(eos_ids, list) else {eos_ids}
    assert len(ours) == 20
    # transformers stops at its EOS ids; everything it produced must be what groundup produced.
    assert theirs == ours[: len(theirs)]
    assert len(theirs) == 20 or theirs[-1] in eos_ids


@pytest.mark.parametrize("name", list(CONFIGS))
def test_to_and_from_transformers_in_memory(name):
    model = random_model(make_config(name))
    hf_model = to_transformers(model)
    expected = "GPT2LMHeadModel" if model.config.family == "gpt2" else "LlamaForCausalLM"
    assert type(hf_model).__name__ == expected and not hf_model.training
    ids = torch.randint(0, model.config.vocab_size, (40,)).tolist()
    assert logits_diff(model, hf_model, ids) <= TOLERANCE
    back = from_transformers(hf_model)
    assert logits_diff(back, hf_model, ids) <= TOLERANCE
    theirs = {t.untyped_storage().data_ptr() for t in hf_model.state_dict().values()}
    assert not theirs & {p.untyped_storage().data_ptr() for p in back.parameters()}  # a copy: training one...
    with torch.no_grad():
        for p in back.parameters():
            p.add_(1.0)
    assert logits_diff(model, hf_model, ids) <= TOLERANCE  # ...leaves the other as it was
    shared = from_transformers(hf_model, share=True)
    assert theirs & {p.untyped_storage().data_ptr() for p in shared.parameters()}
    names = hf_param_names(model.config)
    assert set(names) >= {k for k in model.state_dict()}


def test_hf_param_names_split_fused_llama_tensors():
    names = hf_param_names(make_config("llama"))
    assert names["blocks.1.attn.qkv.weight"].split("+") == [
        f"model.layers.1.self_attn.{x}_proj.weight" for x in "qkv"]
    assert names["blocks.0.mlp.fc.weight"] == "model.layers.0.mlp.gate_proj.weight+model.layers.0.mlp.up_proj.weight"
    assert hf_param_names(make_config("gpt2"))["blocks.0.attn.qkv.weight"] == "transformer.h.0.attn.c_attn.weight"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_folder_loads_with_auto_classes_and_matches(name, interop_model_dirs, tmp_path):
    model_dir = interop_model_dirs[name]
    out = export_hf(model_dir, tmp_path / "hf")
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja"} <= {p.name for p in out.iterdir()}
    model, tokenizer = load_model_dir(model_dir)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)

    ids = tokenizer.encode(MIXED_TEXT)
    assert hf_tokenizer(MIXED_TEXT, add_special_tokens=False)["input_ids"] == ids  # tokenizer parity
    assert hf_tokenizer.decode(ids) == MIXED_TEXT
    assert hf_tokenizer.eos_token_id == tokenizer.eos_id
    assert logits_diff(model, hf_model, ids[: model.config.block_size]) <= TOLERANCE
    assert_same_greedy(model, hf_model, ids[:10])
    assert set(hf_model.generation_config.eos_token_id) == {tokenizer.eos_id, tokenizer.token_to_id("<|im_end|>")}

    # The chat template renders the same in transformers as in groundup.
    from groundup.tokenizer.chat import read_chat_template, render_chat

    messages = [{"role": "user", "content": "hi"}]
    assert hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == render_chat(
        messages, read_chat_template(model_dir), add_generation_prompt=True)


def test_export_shards_and_half_precision(interop_model_dirs, tmp_path):
    out = export_hf(interop_model_dirs["llama"], tmp_path / "hf", dtype="bfloat16", max_shard_size="20KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    assert not (out / "model.safetensors").exists()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert hf_model.dtype == torch.bfloat16
    # And it comes back in: the sharded folder imports, with weights equal to the source rounded to bf16.
    back, _ = load_model_dir(import_hf(out, tmp_path / "back"))
    source, _ = load_model_dir(interop_model_dirs["llama"])
    for (k, a), b in zip(source.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a.to(torch.bfloat16).float(), b), k


# ---------------------------------------------------------------------------- import of transformers models


def hf_folder(kind: str, path, tokenizer_dir, *, tie: bool = False):
    """A transformers-created random model of ``kind`` saved as a local folder with the spine tokenizer."""
    common = dict(vocab_size=320, tie_word_embeddings=tie)
    llama_shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6)
    configs = {
        "gpt2": lambda: transformers.GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=4, **common),
        "llama": lambda: transformers.LlamaConfig(**llama_shape, rope_parameters={"rope_type": "default",
                                                                                  "rope_theta": 20000.0}, **common),
        "mistral": lambda: transformers.MistralConfig(**llama_shape, sliding_window=None, **common),
        "qwen2": lambda: transformers.Qwen2Config(**llama_shape, **common),
    }
    torch.manual_seed(1)
    hf_model = transformers.AutoModelForCausalLM.from_config(configs[kind]())
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    hf_model.eval().save_pretrained(path)
    shutil.copyfile(tokenizer_dir / "tokenizer.json", path / "tokenizer.json")
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                            "chat_template": template}))
    return hf_model, template


@pytest.mark.parametrize(("kind", "tie"), [("gpt2", True), ("llama", False), ("mistral", False), ("qwen2", True)])
def test_import_transformers_model(kind, tie, spine_tokenizer, tmp_path):
    hf_model, template = hf_folder(kind, tmp_path / "hf", spine_tokenizer, tie=tie)
    out = import_hf(tmp_path / "hf", tmp_path / "model")
    model, tokenizer = load_model_dir(out)
    if kind == "qwen2":
        assert model.config.qkv_bias and not model.config.bias
    assert model.config.tie_embeddings == tie
    assert (out / "chat_template.jinja").read_text() == template
    assert isinstance(Tokenizer.from_file(out), Tokenizer)
    ids = tokenizer.encode(MIXED_TEXT)[:64]
    assert logits_diff(model, hf_model, ids) <= TOLERANCE
    assert_same_greedy(model, hf_model, ids[:8])


def test_unmappable_shape_names_what_does_not_map():
    config = ModelConfig(norm="layernorm", position="rope", mlp="swiglu", vocab_size=64, n_embd=32, n_head=4)
    with pytest.raises(UnsupportedModelError, match=r"norm='layernorm' \(needs 'rmsnorm'\)"):
        to_transformers(random_model(config))


def test_import_keeps_a_sentencepiece_style_tokenizer(spine_tokenizer, tmp_path):
    """Llama 2 / Mistral tokenizers (Metaspace normalizer, byte fallback) load through ``tokenizers``; GGUF,
    which groundup writes as byte-level BPE only, refuses them by name."""
    import tokenizers
    from tokenizers import decoders, models, normalizers, trainers

    from groundup.interop.gguf import export_gguf

    hf_folder("llama", tmp_path / "hf", spine_tokenizer)
    tok = tokenizers.Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(["hello world, a sentencepiece style tokenizer " * 10],
                            trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    out = import_hf(tmp_path / "hf", tmp_path / "model")
    model, tokenizer = load_model_dir(out)
    assert tokenizer.eos_id == tok.token_to_id("</s>")
    ids = tokenizer.encode("hello world")
    assert tokenizer.decode(ids) == "hello world" and ids == tok.encode("hello world").ids
    with pytest.raises(UnsupportedModelError, match="byte-level BPE"):
        export_gguf(out, tmp_path / "gguf")
    # Without ChatML tokens (and no template of its own) the export carries no chat template.
    (out / "chat_template.jinja").unlink()
    exported = export_hf(out, tmp_path / "exported")
    assert not (exported / "chat_template.jinja").exists()
    assert "chat_template" not in json.loads((exported / "tokenizer_config.json").read_text())
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported, local_files_only=True)
    assert hf_tokenizer("hello world", add_special_tokens=False)["input_ids"] == ids
