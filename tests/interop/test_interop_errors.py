"""Bad input to import and export: each error names the file, key or tensor at fault."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from groundup.interop.hf import UnsupportedModelError, export_hf, import_hf

transformers = pytest.importorskip("transformers")


@pytest.fixture
def llama_folder(tmp_path, spine_tokenizer):
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    folder = tmp_path / "hf"
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    (folder / "tokenizer.json").write_bytes((spine_tokenizer / "tokenizer.json").read_bytes())
    return folder


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def edit_tensors(folder, fn):
    tensors = load_file(folder / "model.safetensors")
    fn(tensors)
    save_file(tensors, folder / "model.safetensors")


def test_folder_without_config(tmp_path):
    (tmp_path / "hf").mkdir()
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        import_hf(tmp_path / "nowhere", tmp_path / "out")


def test_unsupported_architecture(llama_folder, tmp_path):
    edit_config(llama_folder, model_type="bert", architectures=["BertForMaskedLM"])
    with pytest.raises(UnsupportedModelError, match="model_type 'bert' .*BertForMaskedLM"):
        import_hf(llama_folder, tmp_path / "out")


@pytest.mark.parametrize(("changes", "message"), [
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    # llama3 scaling imports (test_interop_families); without its keys it is refused, naming the one missing
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
     "rope_scaling.low_freq_factor is required for rope_type 'llama3'"),
    # a head size of its own imports (Qwen3); here the tensors were made for another one
    ({"head_dim": 16}, r"q_proj\.weight: \(32, 32\) in the file, \(64, 32\) expected"),
    ({"num_hidden_layers": None}, "missing key 'num_hidden_layers'"),
])
def test_unsupported_config_values(llama_folder, tmp_path, changes, message):
    edit_config(llama_folder, **changes)
    with pytest.raises(UnsupportedModelError, match=message):
        import_hf(llama_folder, tmp_path / "out")


def test_missing_tensor_is_named(llama_folder, tmp_path):
    edit_tensors(llama_folder, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(UnsupportedModelError, match=r"missing tensors model\.layers\.1\.mlp\.up_proj\.weight"):
        import_hf(llama_folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_mismatched_shape_is_named(llama_folder, tmp_path):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, 32)

    edit_tensors(llama_folder, shrink)
    with pytest.raises(UnsupportedModelError, match=r"k_proj\.weight: \(8, 32\) in the file, \(16, 32\) expected"):
        import_hf(llama_folder, tmp_path / "out")


def test_unexpected_tensor_is_named(llama_folder, tmp_path):
    def add_qk_norm(t):  # Qwen3-style q_norm, which groundup's model does not have
        t["model.layers.0.self_attn.q_norm.weight"] = torch.ones(8)

    edit_tensors(llama_folder, add_qk_norm)
    with pytest.raises(UnsupportedModelError, match=r"unexpected tensors model\.layers\.0\.self_attn\.q_norm"):
        import_hf(llama_folder, tmp_path / "out")


def test_missing_weights_and_shards(llama_folder, tmp_path):
    (llama_folder / "model.safetensors").rename(llama_folder / "elsewhere.safetensors")
    with pytest.raises(FileNotFoundError, match="no weights"):
        import_hf(llama_folder, tmp_path / "out")
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
    (llama_folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00001-of-00002.safetensors"):
        import_hf(llama_folder, tmp_path / "out")


def test_missing_tokenizer(llama_folder, tmp_path):
    (llama_folder / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        import_hf(llama_folder, tmp_path / "out")


def test_gpt2_with_exact_gelu_is_refused(tmp_path):
    folder = tmp_path / "gpt2"
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                     activation_function="gelu")
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    with pytest.raises(UnsupportedModelError, match="activation_function 'gelu'"):
        import_hf(folder, tmp_path / "out")


def test_export_of_missing_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="model dir"):
        export_hf(tmp_path / "nothing", tmp_path / "out")


def test_missing_extra_names_it(monkeypatch):
    import sys

    from groundup.extras import import_extra

    monkeypatch.setitem(sys.modules, "gguf", None)  # what an environment without the package looks like
    with pytest.raises(ImportError, match=r"groundup\[interop\]"):
        import_extra("gguf", "interop")
