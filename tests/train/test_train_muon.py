"""Muon: which parameters it trains, its orthogonalised update, torch.optim.Muon's arithmetic, the schedule,
the optimizer state, bad settings, and fine-tuning with it."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn
from torch.optim._muon import _zeropower_via_newtonschulz

from groundup.model.classifier import add_class_head
from groundup.model.config import ModelConfig
from groundup.model.lora import LoRAConfig, apply_lora
from groundup.model.transformer import Transformer
from groundup.parallel.apply_ac import apply_ac
from groundup.train import muon
from groundup.train.muon import MuonConfig, MuonWithAdamW, hidden_matrices, orthogonalize
from groundup.train.optim import OptimConfig, build_optimizer, set_lr

BLOCK_MATRICES = ["attn.qkv.weight", "attn.proj.weight", "mlp.fc.weight", "mlp.proj.weight"]


def tiny(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_name("tiny-llama", n_layer=2, n_embd=32, n_head=4, n_kv_head=2,
                                             vocab_size=64, block_size=16, **overrides))


def names_by_group(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[set[str], set[str]]:
    """(names Muon trains, names AdamW trains)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    muon_names, adamw_names = set(), set()
    for group in optimizer.param_groups:
        (muon_names if group["use_muon"] else adamw_names).update(name_of[id(p)] for p in group["params"])
    return muon_names, adamw_names


def backward(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, model.config.vocab_size, (2, 16), generator=gen)
    model(x, x.roll(-1, dims=1)).backward()


@pytest.mark.parametrize("tie", [True, False])
def test_muon_trains_the_blocks_linear_weights_and_adamw_the_rest(tie):
    model = tiny(tie_embeddings=tie)
    optimizer = build_optimizer(model, OptimConfig(optimizer="muon"), "cpu")
    muon_names, adamw_names = names_by_group(model, optimizer)
    assert muon_names == {f"blocks.{i}.{m}" for i in range(2) for m in BLOCK_MATRICES}
    head = set() if tie else {"lm_head.weight"}
    assert adamw_names == {"tok_embeddings.weight", "final_norm.weight", *head,
                           *(f"blocks.{i}.{n}_norm.weight" for i in range(2) for n in ("attn", "mlp"))}
    adamw_decay = {p for g in optimizer.param_groups if not g["use_muon"] and g["weight_decay"] > 0 for p in g["params"]}
    assert all(p.dim() == 2 for p in adamw_decay) and len(adamw_decay) == 1 + (not tie)


def test_value_embeddings_and_a_classifier_head_stay_with_adamw():
    model = add_class_head(tiny(value_embeddings=True), 3)
    optimizer = build_optimizer(model, OptimConfig(optimizer="muon"), "cpu")
    muon_names, adamw_names = names_by_group(model, optimizer)
    # an nn.Embedding inside a block is AdamW's; the value embedding's gate is a linear layer: Muon's (as nanochat)
    assert {"blocks.1.attn.value_embedding.embedding.weight", "lm_head.weight"} <= adamw_names
    assert muon_names == {f"blocks.{i}.{m}" for i in range(2) for m in BLOCK_MATRICES} | {
        "blocks.1.attn.value_embedding.gate.weight"}
    assert not muon_names & adamw_names


def test_wrapped_blocks_are_found_by_their_plain_names():
    model = apply_ac(tiny(), "full")
    assert sorted(hidden_matrices(model).values()) == sorted(f"blocks.{i}.{m}" for i in range(2) for m in BLOCK_MATRICES)


def test_lora_has_no_matrix_for_muon_and_is_refused_by_name():
    model = tiny()
    apply_lora(model, LoRAConfig(enabled=True, rank=2))
    assert hidden_matrices(model) == {}  # the base weights are frozen; lora_A / lora_B are AdamW's
    with pytest.raises(ValueError, match="optim.optimizer=muon.*LoRA.*optim.optimizer=adamw"):
        build_optimizer(model, OptimConfig(optimizer="muon"), "cpu")


@pytest.mark.parametrize(("coefficients", "band"), [("auto", (0.44, 1.56)), ("jordan", (0.5, 1.3))])
def test_a_step_moves_a_matrix_by_an_orthogonalised_update(coefficients, band):
    model = tiny()
    muon_cfg = MuonConfig(lr=0.01, weight_decay=0.0, adjust_lr="original", ns_coefficients=coefficients)
    optimizer = build_optimizer(model, OptimConfig(optimizer="muon", muon=muon_cfg), "cpu")
    group = next(g for g in optimizer.param_groups if g["use_muon"])
    # on a CPU (fp32) 'auto' is Polar Express's 4 steps; Jordan's (torch.optim.Muon's) take 5
    assert (group["ns_coefficients"], group["ns_steps"]) == (("polar_express", 4) if coefficients == "auto" else
                                                             ("jordan", 5))
    weight = model.blocks[0].attn.proj.weight  # (32, 32): 'original' leaves the lr as it is
    u, _, v = torch.linalg.svd(torch.randn(32, 32))
    spread = torch.logspace(0, -2, 32)  # a gradient whose singular values span two decades
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    weight.grad = u @ torch.diag(spread) @ v
    before = weight.detach().clone()
    optimizer.step()
    step = torch.linalg.svdvals(before - weight.detach()) / 0.01
    assert band[0] < step.min() and step.max() < band[1]  # all directions move alike (the iteration's band)
    assert torch.linalg.svdvals(weight.grad).max() / torch.linalg.svdvals(weight.grad).min() > 50


@pytest.mark.parametrize("shape", [(96, 32), (32, 192), (48, 48)])
def test_the_gram_form_agrees_with_the_plain_iteration(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    x = g.T if shape[0] > shape[1] else g
    x = x / x.norm()
    schedule = muon.ns_schedule("jordan", 5)
    plain, gram = muon._newton_schulz(x, schedule), muon._gram_newton_schulz(x, schedule)
    assert (plain - gram).abs().max() <= 1e-4 * plain.abs().max()
    assert orthogonalize(g, steps=5, dtype=torch.float32).shape == shape


def test_matrices_of_one_shape_are_orthogonalised_as_a_stack_alike():
    gen = torch.Generator().manual_seed(3)
    updates = [torch.randn(shape, generator=gen) for shape in [(96, 32), (32, 32), (96, 32), (32, 192), (96, 32)]]
    stacked = muon.orthogonalize_all(updates, steps=5, dtype=torch.float32)
    for update, result in zip(updates, stacked, strict=True):
        alone = orthogonalize(update, steps=5, dtype=torch.float32)
        assert result.shape == update.shape
        assert (result - alone).abs().max() <= 1e-5 * alone.abs().max()
    # bf16 keeps one matrix at a time: torch.optim.Muon's bits
    in_bf16 = muon.orthogonalize_all(updates, steps=5, dtype=torch.bfloat16)
    assert all(torch.equal(r, orthogonalize(u, steps=5, dtype=torch.bfloat16)) for u, r in zip(updates, in_bf16, strict=True))


def singular_values_after(schedule: list, low: float = 1e-3) -> torch.Tensor:
    """What the iteration makes of singular values from ``low`` to 1 (a diagonal matrix, in fp64)."""
    x = torch.diag(torch.logspace(math.log10(low), 0, 2000, dtype=torch.float64))
    return torch.diagonal(muon._newton_schulz(x, schedule))


def test_polar_express_steps_are_minimax_and_orthogonalise_more_tightly_than_jordans():
    jordan5 = singular_values_after(muon.ns_schedule("jordan", 5))
    pe4, pe5 = (singular_values_after(muon.ns_schedule("polar_express", k)) for k in (4, 5))
    assert 0.46 < jordan5.min() < 0.48 and 1.19 < jordan5.max() < 1.21  # Jordan's published band
    assert pe4.min() > 0.44 and pe4.max() < 1.56  # four steps: about as far from 1 as Jordan's five
    assert pe5.min() > 0.88 and pe5.max() < 1.12  # five steps: much closer
    # each step is the minimax quintic on the interval the steps before it leave: no nearby quintic does better
    gen, low, high = torch.Generator().manual_seed(0), 1e-3, 1.0
    for a, b, c in muon.POLAR_EXPRESS[:5]:
        x = torch.logspace(math.log10(low), math.log10(high), 20000, dtype=torch.float64)
        powers = torch.stack([x, x**3, x**5])
        best = float((1 - torch.tensor([a, b, c], dtype=torch.float64) @ powers).abs().max())
        nudged = torch.tensor([a, b, c], dtype=torch.float64) + 1e-3 * torch.randn(50, 3, generator=gen,
                                                                                     dtype=torch.float64)
        assert (1 - nudged @ powers).abs().amax(dim=1).min() >= best - 1e-4  # the table keeps 8 decimals
        y = a * x + b * x**3 + c * x**5
        low, high = float(y.min()), float(y.max())
    assert muon.ns_schedule("polar_express", 9)[7:] == [muon.POLAR_EXPRESS[-1]] * 2  # past the table: (15, -10, 3)/8


def test_polar_express_runs_in_fp32_only():
    g = torch.randn(32, 96, generator=torch.Generator().manual_seed(4))
    out = orthogonalize(g, steps=5, dtype=torch.float32, coefficients="polar_express")
    assert torch.linalg.svdvals(out).min() > 0.85 and torch.linalg.svdvals(out).max() < 1.15
    with pytest.raises(ValueError, match="ns_coefficients=polar_express runs in fp32"):
        orthogonalize(g, steps=5, dtype=torch.bfloat16, coefficients="polar_express")
    with pytest.raises(ValueError, match="optim.muon.ns_dtype fp32"):
        build_optimizer(tiny(), OptimConfig(optimizer="muon", muon=MuonConfig(ns_coefficients="polar_express",
                                                                             ns_dtype="bf16")), "cpu")


def test_in_bf16_the_iteration_is_torch_muons_bit_for_bit():
    for shape in [(96, 32), (32, 96)]:
        g = torch.randn(shape, generator=torch.Generator().manual_seed(2))
        expected = _zeropower_via_newtonschulz(g, muon.NS_COEFFICIENTS, 5, muon.EPS)
        assert torch.equal(orthogonalize(g, steps=5, dtype=torch.bfloat16), expected)


def test_steps_follow_torch_optim_muon_and_adamw():
    """With bf16 Newton–Schulz, MuonWithAdamW is torch.optim.Muon on the matrices and AdamW on the rest."""
    ours, ref = tiny(), tiny()
    cfg = OptimConfig(optimizer="muon", lr=1e-3, weight_decay=0.1, fused=False,
                      muon=MuonConfig(lr=0.02, ns_dtype="bf16", adjust_lr="original"))
    optimizer = build_optimizer(ours, cfg, "cpu")
    hidden = hidden_matrices(ref)
    matrices = [p for p in ref.parameters() if id(p) in hidden]
    ref_muon = torch.optim.Muon(matrices, lr=0.02, weight_decay=0.1, adjust_lr_fn="original")
    rest = [p for p in ref.parameters() if id(p) not in hidden]
    ref_adamw = torch.optim.AdamW([{"params": [p for p in rest if p.dim() == 2], "weight_decay": 0.1},
                                   {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=1e-3, betas=cfg.betas, eps=cfg.eps, fused=False)
    for step in range(3):
        for model, opts in ((ours, [optimizer]), (ref, [ref_muon, ref_adamw])):
            backward(model, seed=step)
            for opt in opts:
                opt.step()
                opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_the_schedule_scales_each_groups_own_peak():
    model = tiny()
    optimizer = build_optimizer(model, OptimConfig(optimizer="muon", lr=2e-3, muon=MuonConfig(lr=0.02)), "cpu")
    set_lr(optimizer, 1e-3)  # half way down the schedule
    lrs = {g["use_muon"]: g["lr"] for g in optimizer.param_groups}
    assert lrs[False] == 1e-3 and lrs[True] == pytest.approx(0.01)
    adamw = build_optimizer(model, OptimConfig(lr=2e-3), "cpu")
    set_lr(adamw, 1.5e-3)
    assert [g["lr"] for g in adamw.param_groups] == [1.5e-3, 1.5e-3]
    assert "lr_ratio" not in adamw.state_dict()["param_groups"][0]  # AdamW's checkpoints are as before
    defaults = build_optimizer(model, OptimConfig(optimizer="muon", lr=2e-3), "cpu")
    assert {g["lr"] for g in defaults.param_groups} == {2e-3}  # muon.lr null: optim.lr


def test_the_state_dict_round_trip_continues_exactly():
    cfg = OptimConfig(optimizer="muon", lr=1e-3, muon=MuonConfig(lr=0.02))
    model = tiny()
    optimizer = build_optimizer(model, cfg, "cpu")
    for step in range(2):
        backward(model, seed=step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)  # as the checkpoint writes it
    buffer.seek(0)
    clone = copy.deepcopy(model)
    restored = build_optimizer(clone, cfg, "cpu")
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert isinstance(restored, MuonWithAdamW)
    for m, opt in ((model, optimizer), (clone, restored)):
        set_lr(opt, 5e-4)
        backward(m, seed=9)
        opt.step()
    for (name, a), b in zip(model.named_parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b), name

    adamw_state = build_optimizer(tiny(), OptimConfig(), "cpu").state_dict()
    with pytest.raises(ValueError, match="optim.optimizer=adamw"):
        restored.load_state_dict(adamw_state)


@pytest.mark.parametrize(("field", "value"), [("lr", 0.0), ("momentum", 1.0), ("ns_steps", 0), ("ns_steps", 100),
                                              ("weight_decay", -0.1), ("adjust_lr", "sqrt"), ("ns_dtype", "fp16"),
                                              ("ns_coefficients", "cubic")])
def test_bad_muon_settings_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=f"optim.muon.{field}"):
        MuonConfig(**{field: value})


def test_an_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="optim.optimizer must be adamw or muon"):
        OptimConfig(optimizer="sgd")


def test_finetune_sft_with_muon_and_lora_refused(spine_model, tmp_path):
    import json

    from groundup import cli

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"say {w}", "output": w}) + "\n"
                            for w in ["cat", "dog", "emu", "yak"] * 4))
    common = ["finetune", "sft", "--model", str(spine_model), "--data", str(data), "--train.max_steps", "2",
              "--train.progress_bar", "false", "--batch_size", "4", "--device", "cpu", "--optim.optimizer", "muon"]
    assert cli.main([*common, "--out", str(tmp_path / "full"), "--optim.muon.lr", "0.005"]) == 0
    saved = json.loads((tmp_path / "full" / "manifest.json").read_text())["config"]["optim"]
    assert saved["optimizer"] == "muon" and saved["muon"]["lr"] == 0.005
    with pytest.raises(ValueError, match="LoRA adapters train with AdamW"):  # the command prints it in one line
        cli.main([*common, "--out", str(tmp_path / "lora"), "--lora.enabled", "true"])
