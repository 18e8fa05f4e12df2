"""The mixture-of-experts block: published counts, dispatch against a plain loop, losses, balancing, bad input."""

from __future__ import annotations

import pytest
import torch

from groundup.model.config import ModelConfig
from groundup.model.moe import MoE, moe_stats, update_expert_bias
from groundup.model.transformer import MLP, Transformer, count_parameters
from groundup.plan.params import count_parameters as planned
from one_batch import train_on_one_batch

PUBLISHED = {  # transformers on the meta device
    "mixtral-8x7b": 46_702_792_704,
    "olmoe-1b-7b": 6_919_161_856,
    "qwen1.5-moe-a2.7b": 14_315_784_192,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_moe_presets_count_exactly(name):
    cfg = ModelConfig.from_name(name)
    assert count_parameters(cfg) == PUBLISHED[name] == planned(cfg).total


def test_active_parameters_of_mixtral():
    counts = planned(ModelConfig.from_name("mixtral-8x7b"))
    # 2 of 8 experts per token: 32 layers x 6 unused experts x 3 x 4096 x 14336 fewer
    assert counts.active == counts.total - 32 * 6 * 3 * 4096 * 14336 == 12_879_925_248


def tiny(**moe) -> ModelConfig:
    base = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, moe_experts=4, moe_top_k=2,
                moe_hidden=16)
    return ModelConfig.llama(**{**base, **moe})


def reference(block: MoE, x: torch.Tensor) -> torch.Tensor:
    """The block's function written as a loop over tokens and their chosen experts."""
    flat = x.reshape(-1, x.shape[-1])
    chosen, weights, _ = block.route(flat)
    out = torch.zeros_like(flat)
    for n in range(flat.shape[0]):
        for e, w in zip(chosen[n].tolist(), weights[n], strict=True):
            h = flat[n] @ block.experts.fc[e].t()
            gate, up = h.chunk(2)
            out[n] += w * ((torch.nn.functional.silu(gate) * up) @ block.experts.proj[e].t())
        if block.shared is not None:
            s = block.shared(flat[n:n + 1])[0]
            out[n] += torch.sigmoid(block.shared_gate(flat[n])) * s if block.shared_gate is not None else s
    return out.view_as(x)


@pytest.mark.parametrize("moe", [
    {},
    {"moe_score": "sigmoid", "moe_groups": 2, "moe_group_top_k": 1, "moe_routed_scale": 2.5},
    {"moe_shared_experts": 2, "moe_shared_gate": True, "moe_normalize": False},
])
def test_dropless_dispatch_equals_the_loop(moe):
    torch.manual_seed(0)
    model = Transformer(tiny(**moe))
    block = model.blocks[1].mlp
    assert isinstance(block, MoE)
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        assert torch.allclose(block(x), reference(block, x), atol=1e-5)


def test_group_limited_routing_keeps_to_the_best_groups():
    torch.manual_seed(0)
    block = Transformer(tiny(moe_experts=8, moe_groups=4, moe_group_top_k=1, moe_score="sigmoid")).blocks[0].mlp
    chosen, _, _ = block.route(torch.randn(50, 32))
    assert (chosen // 2).unique(dim=1).shape[1] == 1 or all(len(set((row // 2).tolist())) == 1 for row in chosen)


def test_first_layers_dense_and_losses_in_training():
    torch.manual_seed(0)
    model = Transformer(tiny(n_layer=3, moe_dense_layers=1, moe_z_loss_coef=1e-3))
    assert isinstance(model.blocks[0].mlp, MLP) and isinstance(model.blocks[2].mlp, MoE)
    idx = torch.randint(0, 64, (2, 16))
    loss = model(idx, idx)
    loss.backward()
    assert model.blocks[1].mlp.router.weight.grad.abs().sum() > 0  # the aux loss reaches the router
    stats = moe_stats(model)
    assert stats["moe_aux_loss"] >= 1.0 - 1e-6 and stats["moe_z_loss"] > 0  # 1 is perfect balance
    assert len(stats["moe_expert_load"]) == 4 and abs(sum(stats["moe_expert_load"]) - 1) < 1e-6
    assert moe_stats(model).get("moe_expert_load") is None  # read once, then reset


def test_activation_checkpointing_counts_each_token_once():
    """The forward recomputed inside backward routes the same tokens again: the loads count them once."""
    import copy

    from groundup.parallel.apply_ac import apply_ac

    torch.manual_seed(0)
    plain = Transformer(tiny())
    checkpointed = apply_ac(copy.deepcopy(plain), "full", 1)
    idx = torch.randint(0, 64, (2, 16))
    loads = []
    for model in (plain, checkpointed):
        model(idx, idx).backward()
        loads.append([m.mlp.expert_load.clone() for m in model.blocks])
    assert all(torch.equal(a, b) for a, b in zip(*loads, strict=True))
    assert float(sum(x.sum() for x in loads[0])) == 2 * 16 * 2 * 2  # tokens x k x layers


def test_bias_balancing_moves_towards_the_idle_experts():
    torch.manual_seed(0)
    model = Transformer(tiny(moe_balance="bias", moe_bias_rate=0.01))
    block = model.blocks[0].mlp
    with torch.no_grad():
        block.router.weight.zero_()
        block.router.weight[0] = 1.0  # expert 0 takes every token whose features sum positive
    x = torch.randn(64, 32).abs()
    block.route(x)
    update_expert_bias(model)
    load = block.expert_load
    assert block.expert_bias[0] < 0 and load[0] == 64  # the overloaded expert is pushed down
    assert all(block.expert_bias[e] > 0 for e in range(4) if load[e] < load.mean())  # the idle ones up
    assert any(k.endswith("expert_bias") for k in model.state_dict())  # saved with the weights


@pytest.mark.parametrize(("changes", "named"), [
    ({"moe_top_k": 5}, "moe_top_k"),
    ({"moe_groups": 3}, "moe_groups"),
    ({"moe_shared_gate": True}, "moe_shared_gate"),
    ({"bias": True}, "bias=False"),
])
def test_bad_moe_settings_are_named(changes, named):
    with pytest.raises(ValueError, match=named):
        tiny(**changes)


def test_moe_weights_into_a_dense_shape_are_refused(tmp_path):
    from groundup.model.io import load_model_weights, save_model_weights

    save_model_weights(Transformer(tiny()), tmp_path / "moe.safetensors")
    dense = Transformer(tiny(moe_experts=0))
    with pytest.raises(Exception, match="experts"):
        load_model_weights(dense, tmp_path / "moe.safetensors")


def test_the_training_step_trains_and_logs_the_experts():
    torch.manual_seed(0)
    model = Transformer(tiny(moe_balance="bias")).train()
    x = torch.randint(0, 64, (4, 17))
    results = train_on_one_batch(model, (x[:, :-1], x[:, 1:]), 6)
    assert results[-1].loss < results[0].loss
    extras = results[-1].extras
    assert {"moe_aux_loss", "moe_z_loss", "moe_load_max_over_mean"} <= set(extras)
    assert abs(sum(extras[f"moe_load_{e}"] for e in range(4)) - 1) < 1e-6
    assert model.blocks[0].mlp.expert_bias.abs().sum() > 0  # the bias method moved


def expert_reference(block: MoE, x: torch.Tensor, fc: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """The routed experts' output with explicit per-expert weights ``fc`` (E, 2H, C), ``proj`` (E, C, H)."""
    flat = x.reshape(-1, x.shape[-1])
    chosen, weights, _ = block.route(flat)
    out = torch.zeros_like(flat)
    for n in range(flat.shape[0]):
        for e, w in zip(chosen[n].tolist(), weights[n], strict=True):
            gate, up = (flat[n] @ fc[e].t()).chunk(2)
            out[n] += w * ((torch.nn.functional.silu(gate) * up) @ proj[e].t())
    return out.view_as(x)


def test_lora_on_the_experts_is_one_low_rank_update_per_expert(tmp_path):
    from groundup.finetune.peft_format import peft_state
    from groundup.model.lora import (
        LoRAConfig,
        LoRAExperts,
        apply_lora,
        load_adapter,
        merge_lora,
        save_adapter,
    )

    torch.manual_seed(0)
    model = Transformer(tiny())
    base = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LoRAConfig(enabled=True, rank=2, alpha=4.0, targets=["*.mlp.experts"])
    names = apply_lora(model, cfg)
    assert names == ["blocks.0.mlp.experts.fc", "blocks.0.mlp.experts.proj", "blocks.1.mlp.experts.fc",
                     "blocks.1.mlp.experts.proj"]
    block = model.blocks[1].mlp
    experts = block.experts
    assert isinstance(experts, LoRAExperts) and experts.fc_lora_A.shape == (4, 2, 32)
    assert experts.fc_lora_B.shape == (4, 32, 2) and experts.proj_lora_A.shape == (4, 2, 16)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"blocks.{i}.mlp.experts.{w}_lora_{ab}" for i in (0, 1) for w in ("fc", "proj") for ab in "AB"}
    x = torch.randn(2, 7, 32)
    x_idx = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        plain = Transformer(tiny())
        plain.load_state_dict(base)
        assert torch.equal(model(x_idx), plain(x_idx))  # B starts at zero: the base model exactly
        for m in (experts, model.blocks[0].mlp.experts):
            m.fc_lora_B.normal_(std=0.1)
            m.proj_lora_B.normal_(std=0.1)
        fc = experts.fc + 2.0 * torch.bmm(experts.fc_lora_B, experts.fc_lora_A)
        proj = experts.proj + 2.0 * torch.bmm(experts.proj_lora_B, experts.proj_lora_A)
        routed = block(x) - (block.shared(x.reshape(-1, 32)).view_as(x) if block.shared is not None else 0)
        assert torch.allclose(routed, expert_reference(block, x, fc, proj), atol=1e-5)
        adapted = model(x_idx)
    loss = model(x_idx, targets=x_idx)
    loss.backward()
    assert experts.fc_lora_A.grad.abs().sum() > 0 and experts.fc.grad is None
    save_adapter(tmp_path, model, cfg)
    with pytest.raises(ValueError, match="experts"):
        peft_state(model)
    reloaded = load_adapter(Transformer(tiny()).requires_grad_(False), tmp_path)
    with torch.no_grad():
        reloaded.load_state_dict(base, strict=False)
        assert torch.allclose(reloaded(x_idx), adapted, atol=1e-6)
        merged = merge_lora(model)
        assert not any("lora" in k for k in merged.state_dict())
        assert torch.allclose(merged(x_idx), adapted, atol=1e-5)
    one = Transformer(tiny())
    assert apply_lora(one, LoRAConfig(enabled=True, targets=["blocks.1.mlp.experts.proj"])) == [
        "blocks.1.mlp.experts.proj"]
    assert one.blocks[1].mlp.experts.adapted == ("proj",) and not hasattr(one.blocks[1].mlp.experts, "fc_lora_A")


@pytest.mark.parametrize("kind", ["swiglu", "relu2", "gelu"])
def test_expert_loop_gradients_equal_autograd_through_the_loop(kind):
    """The expert loop's hand-written backward against autograd through a loop over the stacked weights, with an
    expert that gets no token (its gradients are zero) and in double precision through gradcheck."""
    from groundup.model.moe import activate, expert_loop

    torch.manual_seed(0)
    E, C, H, counts = 4, 8, 6, torch.tensor([3, 0, 5, 2])
    up = 2 * H if kind == "swiglu" else H
    x = torch.randn(int(counts.sum()), C, requires_grad=True)
    fc, proj = torch.randn(E, up, C, requires_grad=True), torch.randn(E, C, H, requires_grad=True)

    def loop(x, fc, proj):
        parts, start = [], 0
        for e, n in enumerate(counts.tolist()):
            parts.append(activate(x[start:start + n] @ fc[e].t(), kind) @ proj[e].t())
            start += n
        return torch.cat(parts)

    dy = torch.randn(x.shape[0], C)
    ours = expert_loop(x, counts, fc, proj, kind)
    theirs = loop(x, fc, proj)
    assert torch.allclose(ours, theirs, atol=1e-6)
    got = torch.autograd.grad(ours, (x, fc, proj), dy)
    want = torch.autograd.grad(theirs, (x, fc, proj), dy)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-5)
    assert got[1][1].abs().sum() == 0 and got[2][1].abs().sum() == 0
    inputs = tuple(t.detach().double().requires_grad_() for t in (x, fc, proj))
    assert torch.autograd.gradcheck(lambda a, b, c: expert_loop(a, counts, b, c, kind), inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's casts apply as they do to the plain loop
        looped = loop(x, fc, proj)
        assert looped.dtype == torch.bfloat16 and torch.equal(expert_loop(x, counts, fc, proj, kind), looped.float())


def test_grouped_and_looped_experts_agree_with_gradients():
    """Where the grouped kernel takes the shape (rows of 16 bytes' multiples), the experts run as one grouped
    product; its values and gradients equal the loop's, an expert without tokens included."""
    from groundup.model.moe import Experts, _grouped_mm_ok, expert_loop

    torch.manual_seed(0)
    experts = Experts(tiny(n_embd=16, moe_hidden=8))
    torch.nn.init.normal_(experts.fc)
    torch.nn.init.normal_(experts.proj)
    counts = torch.tensor([3, 0, 5, 2])
    x = torch.randn(10, 16, requires_grad=True)
    if not _grouped_mm_ok(x, experts.fc, experts.proj):
        pytest.skip("this PyTorch has no CPU grouped_mm")
    assert not _grouped_mm_ok(x, experts.fc[:, :, :6], experts.proj)  # 24-byte rows: the loop
    dy = torch.randn(10, 16)
    grouped = experts(x, counts)
    looped = expert_loop(x, counts, experts.fc, experts.proj, "swiglu")
    assert torch.allclose(grouped, looped, atol=1e-5)
    for g, w in zip(torch.autograd.grad(grouped, (x, experts.fc, experts.proj), dy),
                    torch.autograd.grad(looped, (x, experts.fc, experts.proj), dy), strict=True):
        assert torch.allclose(g, w, atol=1e-4)
