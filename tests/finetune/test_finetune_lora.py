"""LoRA: only adapters train, merge is exact, adapter files are small and load over the base, PEFT layout, resume."""

from __future__ import annotations

import json

import pytest
import torch
from finetune_helpers import (
    assert_same_weights,
    fruit_items,
    interrupted_then_resumed,
    loop,
    tiny_config,
    weights,
    write_jsonl,
)
from safetensors.torch import load_file

from groundup.finetune import sft
from groundup.finetune.data import ExampleBatches
from groundup.finetune.peft_format import PEFT_CONFIG, PEFT_WEIGHTS, hf_module_names, peft_state
from groundup.model.io import load_model_dir
from groundup.model.lora import LoRAConfig, LoRALinear, apply_lora, count_parameters, load_adapter, merge_lora
from groundup.model.transformer import Transformer
from groundup.train.optim import OptimConfig


def data_file(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in fruit_items()[:48]])


def lora_sft(base, data, out, resume=None, steps=6, **lora):
    return sft.Config(model=base, data=data, out=out, batch_size=8, device="cpu", val_fraction=0.1,
                      lora=LoRAConfig(enabled=True, rank=4, alpha=8, **lora),
                      optim=OptimConfig(lr=1e-2, warmup_steps=2), train=loop(max_steps=steps, resume=resume))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_merged_equals_unmerged_and_starts_at_the_base(family):
    torch.manual_seed(0)
    model = Transformer(tiny_config(family, 320)).eval()
    x = torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        before = model(x)
        names = apply_lora(model, LoRAConfig(enabled=True, rank=4, alpha=8))
        assert torch.equal(model(x), before)  # B starts at zero: training starts from the base exactly
        assert sorted({n.split(".", 2)[2] for n in names}) == ["attn.proj", "attn.qkv", "mlp.fc", "mlp.proj"]
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.05)
        unmerged = model(x)
        trainable, total = count_parameters(model)
        assert trainable == sum(m.lora_A.numel() + m.lora_B.numel() for m in model.modules()
                                if isinstance(m, LoRALinear))
        merge_lora(model)
        assert not any(isinstance(m, LoRALinear) for m in model.modules())
        assert (unmerged - before).abs().max() > 1e-3  # the adapters do change the output
        assert torch.allclose(model(x), unmerged, atol=1e-5, rtol=0)
        assert set(model.state_dict()) == set(Transformer(tiny_config(family, 320)).state_dict())


def test_lora_trains_only_adapters_and_saves_a_small_adapter(base_llama, tmp_path):
    out = sft.run(lora_sft(base_llama, data_file(tmp_path), tmp_path / "lora", steps=8, dropout=0.1))
    base = weights(base_llama)
    ckpt = load_file(str(out / "checkpoints" / "step-000008" / "model.safetensors"))
    adapters = {k for k in ckpt if k.endswith((".lora_A", ".lora_B"))}
    assert adapters and all(k.rsplit(".", 1)[0] + ".weight" in base for k in adapters)
    for name, tensor in ckpt.items():  # the frozen base is bit-for-bit the base model dir's
        if name not in adapters:
            assert torch.equal(tensor, base[name]), name
    assert any(not torch.equal(ckpt[k], torch.zeros_like(ckpt[k])) for k in adapters if k.endswith("lora_B"))

    result = json.loads((out / "result.json").read_text())
    assert 0 < result["trainable_parameters"] < result["total_parameters"] / 5
    adapter_file = out / "adapter" / "adapter.safetensors"
    assert adapter_file.stat().st_size < (base_llama / "model.safetensors").stat().st_size / 5

    # the adapter over a fresh base gives the merged model dir's outputs
    merged, _ = load_model_dir(out)
    over_base, _ = load_model_dir(base_llama)
    load_adapter(over_base, out / "adapter")
    over_base.eval()
    x = torch.randint(0, 320, (2, 20))
    with torch.no_grad():
        assert torch.allclose(over_base(x), merged(x), atol=1e-5, rtol=0)
        assert not torch.allclose(load_model_dir(base_llama)[0](x), merged(x), atol=1e-4)


def test_peft_files_split_fused_projections_exactly(base_llama, tmp_path):
    out = sft.run(lora_sft(base_llama, data_file(tmp_path), tmp_path / "lora", steps=3))
    config = json.loads((out / "adapter" / PEFT_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                "v_proj"]
    tensors = load_file(str(out / "adapter" / PEFT_WEIGHTS))
    model, _ = load_model_dir(base_llama)
    load_adapter(model, out / "adapter")
    qkv = model.blocks[1].attn.qkv
    prefix = "base_model.model.model.layers.1.self_attn"
    parts = [tensors[f"{prefix}.{p}_proj.lora_B.weight"] for p in "qkv"]
    assert torch.equal(torch.cat(parts), qkv.lora_B.detach())  # B row-sliced...
    for p in "qkv":
        assert torch.equal(tensors[f"{prefix}.{p}_proj.lora_A.weight"], qkv.lora_A.detach())  # ...A shared
    # the split update equals the fused one, part by part
    delta = qkv.delta_weight()
    for (hf, (lo, hi)) in hf_module_names(model.config, "blocks.1.attn.qkv"):
        part = hf.rsplit(".", 1)[1]
        b, a = tensors[f"{prefix}.{part}.lora_B.weight"], tensors[f"{prefix}.{part}.lora_A.weight"]
        assert torch.allclose(b @ a * qkv.scaling, delta[lo:hi], atol=1e-7)
    assert len(tensors) == 2 * 7 * model.config.n_layer


def test_gpt2_peft_names_follow_conv1d_modules():
    torch.manual_seed(0)
    model = Transformer(tiny_config("gpt2", 320))
    apply_lora(model, LoRAConfig(enabled=True, rank=2, targets=["*.attn.qkv", "blocks.0.mlp.proj"]))
    state, names = peft_state(model)
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj", "transformer.h.1.attn.c_attn"]
    assert state["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].shape == (3 * 64, 2)
    from groundup.finetune.peft_format import _target_modules

    # c_attn is adapted in every layer (short name); mlp.c_proj only in layer 0 (full name: not attn.c_proj)
    assert _target_modules(model.config, names) == ["c_attn", "transformer.h.0.mlp.c_proj"]


def test_lora_resume_is_exact(base_llama, tmp_path, monkeypatch):
    data = data_file(tmp_path)
    straight, resumed = interrupted_then_resumed(
        sft.run, lambda out, resume: lora_sft(base_llama, data, out, resume, dropout=0.1), tmp_path, monkeypatch,
        ExampleBatches)
    assert_same_weights(straight, resumed)
    assert_same_weights(straight / "checkpoints" / "step-000006", resumed / "checkpoints" / "step-000006")
    a, b = (load_file(str(d / "adapter" / "adapter.safetensors")) for d in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
