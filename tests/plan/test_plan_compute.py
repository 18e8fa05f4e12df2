"""Compute: training FLOPs, the Megatron formula and Chinchilla sizes against published figures."""

from __future__ import annotations

import math

import pytest

from groundup.model.config import ModelConfig
from groundup.plan import compute
from groundup.plan.params import count_parameters

# GPT-3 175B (Brown et al. 2020, table 2.1): 96 layers, width 12288, 96 heads, 2048 context.
GPT3 = ModelConfig.gpt2(name="gpt3-175b", n_layer=96, n_head=96, n_embd=12288, block_size=2048)


def test_gpt3_on_300b_tokens_is_3_14e23():
    n = count_parameters(GPT3).total
    assert n == pytest.approx(175e9, rel=0.01)
    flops = compute.training_flops(GPT3, 300e9, attention=False)
    assert flops == pytest.approx(3.14e23, rel=0.005)  # Brown et al. 2020, table D.1
    # The attention products add a few percent at 2048 tokens.
    with_attention = compute.training_flops(GPT3, 300e9)
    assert 1.02 < with_attention / flops < 1.04


def test_llama2_7b_on_2t_tokens():
    cfg = ModelConfig.from_name("llama-2-7b")
    flops = compute.training_flops(cfg, 2e12, attention=False)
    assert flops == pytest.approx(8.1e22, rel=0.005)  # exact 6.74B parameters
    # Rounding the model to 7B, as the seeds' table does, gives their 8.4e22.
    assert compute.training_flops(None, 2e12, n_params=7e9) == pytest.approx(8.4e22)


def test_chinchilla_70b_wants_1_4t_tokens():
    assert compute.chinchilla_tokens(70e9) == pytest.approx(1.4e12)
    # Chinchilla's own budget (70B on 1.4T tokens, about 5.9e23 FLOPs) buys back 70B by the 20/param rule.
    opt = compute.loss_optimal(6 * 70e9 * 1.4e12)
    assert opt.n_params == pytest.approx(70e9) and opt.tokens == pytest.approx(1.4e12)


def test_parametric_fit_minimizes_loss_on_the_budget():
    budget = 1e21
    opt = compute.loss_optimal(budget, rule="fit")
    assert 6 * opt.n_params * opt.tokens == pytest.approx(budget)
    for scale in (0.5, 0.8, 1.25, 2.0):
        n = opt.n_params * scale
        assert compute.CHINCHILLA_FIT.loss(n, budget / (6 * n)) > opt.loss
    # The fit favours more tokens per parameter than 20.
    assert opt.tokens / opt.n_params > 20


def test_megatron_formula_agrees_with_6n_plus_attention():
    # Without recomputation (72) the per-token Megatron cost is 6N + 12·l·s·h up to the embedding terms.
    b, s = 4, GPT3.block_size
    per_token = compute.megatron_step_flops(GPT3, b, s, recompute=False) / (b * s)
    assert per_token == pytest.approx(compute.flops_per_token(GPT3, s), rel=0.01)
    with_recompute = compute.megatron_step_flops(GPT3, b, s)
    assert with_recompute == pytest.approx(per_token * b * s * 96 / 72)
    # The published expression, written out.
    L, h, V = GPT3.n_layer, GPT3.n_embd, GPT3.vocab_size
    assert with_recompute == pytest.approx(96 * b * s * L * h**2 * (1 + s / (6 * h) + V / (16 * L * h)))


def test_forward_is_a_third_of_training():
    cfg = ModelConfig.from_name("tiny-llama")
    assert compute.flops_per_token(cfg) == pytest.approx(3 * compute.forward_flops_per_token(cfg))
    matmul = count_parameters(cfg).matmul
    assert compute.forward_flops_per_token(cfg, 100) == 2 * matmul + 4 * cfg.n_layer * 100 * cfg.n_embd


def test_flops_per_token_counts_the_built_models_linear_weights():
    # The MFU convention: 6 FLOPs per weight of every nn.Linear (a tied head once) + 12·l·s·C.
    import torch

    from groundup.model.transformer import Transformer

    for name in ("tiny-gpt2", "tiny-llama", "gpt2-124m"):
        cfg = ModelConfig.from_name(name)
        with torch.device("meta"):
            model = Transformer(cfg)
        linear = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
        assert count_parameters(cfg).matmul == sum(linear.values())
        assert compute.flops_per_token(cfg, 64) == 6 * sum(linear.values()) + 12 * cfg.n_layer * cfg.n_embd * 64


def test_training_seconds_and_gpu_seconds():
    cfg = ModelConfig.from_name("tiny-gpt2")
    seconds = compute.training_seconds(cfg, 1e6, peak_flops_per_s=1e11, mfu=0.5)
    assert seconds == pytest.approx(compute.flops_per_token(cfg) * 1e6 / 5e10)
    assert compute.training_seconds(cfg, 1e6, peak_flops_per_s=1e11, mfu=0.5, devices=4) == pytest.approx(seconds / 4)
    # Llama-2-7B: Meta reports 184,320 A100 GPU-hours; 6ND at 312 TFLOP/s implies an MFU near 0.39.
    flops = compute.training_flops(ModelConfig.from_name("llama-2-7b"), 2e12, attention=False)
    implied_mfu = flops / (312e12 * 184_320 * 3600)
    assert 0.35 < implied_mfu < 0.45


@pytest.mark.parametrize("bad", [
    lambda: compute.training_flops(None, 0, n_params=1e9),
    lambda: compute.training_flops(None, 1e9, n_params=-1),
    lambda: compute.training_flops(None, 1e9),
    lambda: compute.chinchilla_tokens(0),
    lambda: compute.loss_optimal(-1.0),
    lambda: compute.loss_optimal(1e20, rule="kaplan"),
    lambda: compute.gpu_seconds(1e20, 1e12, 0.0),
    lambda: compute.gpu_seconds(1e20, 1e12, 1.5),
    lambda: compute.megatron_step_flops(GPT3, 0),
])
def test_bad_input_is_refused(bad):
    with pytest.raises(ValueError):
        bad()


def test_flops_are_finite_for_every_preset():
    from groundup.model.config import PRESETS

    for name in PRESETS:
        cfg = ModelConfig.from_name(name)
        assert math.isfinite(compute.training_flops(cfg, 1e9))
