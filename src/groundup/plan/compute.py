"""Compute: training and forward FLOPs, the Megatron per-step cost, Chinchilla-optimal sizes, and time.

Conventions: one multiply-add is 2 FLOPs; a backward pass costs twice its forward pass, so training
costs 3x the forward (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from groundup.model.config import ModelConfig
from groundup.plan.params import count_parameters

CHINCHILLA_TOKENS_PER_PARAM = 20.0
"""Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models"), table 3: about 20 tokens
per parameter at the compute-optimal point (Chinchilla: 70B parameters, 1.4T tokens)."""


@dataclass(kw_only=True, frozen=True)
class ChinchillaFit:
    """The parametric loss L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 10,
    approach 3). Losses are nats per token on their MassiveText tokenizer: a shape, not a promise
    of the loss another corpus and tokenizer will reach."""

    E: float = 1.69
    """Irreducible loss."""
    A: float = 406.4
    """Coefficient of the model-size term."""
    B: float = 410.7
    """Coefficient of the data-size term."""
    alpha: float = 0.34
    """Exponent of the model-size term."""
    beta: float = 0.28
    """Exponent of the data-size term."""

    def loss(self, n_params: float, tokens: float) -> float:
        return self.E + self.A / n_params**self.alpha + self.B / tokens**self.beta


CHINCHILLA_FIT = ChinchillaFit()


def _positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token of the attention products themselves (QK^T and attention·V):
    4·n_layer·seq_len·(n_head·head_dim), counting the full square as PaLM does (Chowdhery et al. 2022,
    appendix B), not the causal half; these have no parameters, so 2·N misses them. Latent attention's
    query/key and value head dims differ: 2·n_layer·seq_len·n_head·(dn + dr + dv)."""
    _positive(seq_len=seq_len)
    return 2.0 * cfg.n_layer * seq_len * cfg.n_head * (cfg.query_key_dim + cfg.value_dim)


def forward_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Forward FLOPs per token: 2·N_matmul + 4·n_layer·seq_len·d_attn, with N_matmul the weights in a matrix
    product (attention and MLP projections and the head; not embedding lookups, norms or biases) and
    d_attn = n_head·head_dim (Kaplan et al. 2020, table 1, with PaLM's attention term). seq_len defaults
    to block_size."""
    return 2.0 * count_parameters(cfg).matmul + attention_flops_per_token(cfg, seq_len or cfg.block_size)


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training (model) FLOPs per token: 6·N_matmul + 12·n_layer·seq_len·d_attn (PaLM appendix B; nanoGPT
    and the training stage's MFU use the same). This is the figure model FLOPs utilization (MFU) divides
    by; activation recomputation is not counted (that would be hardware FLOPs, not model FLOPs)."""
    return 3.0 * forward_flops_per_token(cfg, seq_len)


def training_flops(cfg: ModelConfig | None, tokens: float, *, n_params: float | None = None,
                   seq_len: int | None = None, attention: bool = True) -> float:
    """Training FLOPs for D tokens.

    - ``attention=True`` (the default, needs a config): the exact model FLOPs,
      C = (6·N_matmul + 12·n_layer·seq_len·d_attn)·D, i.e. :func:`flops_per_token`·D.
    - ``attention=False``, or only ``n_params`` given: the 6·N·D rule with N every parameter, as published
      budgets are stated (GPT-3 175B on 300B tokens: 3.14e23, Brown et al. 2020, table D.1; Llama-2-7B on
      2T tokens: 8.1e22).
    """
    _positive(tokens=tokens)
    if cfg is None or not attention or n_params is not None:
        if n_params is None:
            if cfg is None:
                raise ValueError("training_flops needs a model config or n_params")
            n_params = count_parameters(cfg).total
        _positive(n_params=n_params)
        return 6.0 * n_params * tokens
    return flops_per_token(cfg, seq_len) * tokens


def megatron_step_flops(cfg: ModelConfig, batch_size: int, seq_len: int | None = None, *,
                        recompute: bool = True) -> float:
    """FLOPs of one training step, Narayanan et al. 2021 ("Efficient Large-Scale Language Model Training
    on GPU Clusters Using Megatron-LM"), eq. 3:

        F = 96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h))

    with B sequences of s tokens, l layers, width h, vocabulary V. It assumes a GPT-style block (4h MLP,
    multi-head attention) and full activation recomputation (an extra forward: 4 passes, hence 96);
    without recomputation the factor is 72. Per token: F / (B·s)."""
    s = seq_len or cfg.block_size
    _positive(batch_size=batch_size, seq_len=s)
    L, h, V = cfg.n_layer, cfg.n_embd, cfg.vocab_size
    factor = 96.0 if recompute else 72.0
    return factor * batch_size * s * L * h * h * (1.0 + s / (6.0 * h) + V / (16.0 * L * h))


def chinchilla_tokens(n_params: float, tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM) -> float:
    """Compute-optimal training tokens for N parameters: D ≈ 20·N (Hoffmann et al. 2022)."""
    _positive(n_params=n_params, tokens_per_param=tokens_per_param)
    return tokens_per_param * n_params


@dataclass(kw_only=True, frozen=True)
class OptimalSize:
    """The model size and token count that a compute budget buys, and the loss the fit predicts."""

    compute: float
    """FLOPs, C = 6·N·D."""
    n_params: float
    """Parameters N."""
    tokens: float
    """Training tokens D."""
    loss: float
    """L(N, D) of the Chinchilla parametric fit (nats per token, their tokenizer)."""


def loss_optimal(compute: float, *, rule: str = "tokens_per_param",
                 tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM,
                 fit: ChinchillaFit = CHINCHILLA_FIT) -> OptimalSize:
    """The loss-optimal model size for a compute budget C = 6·N·D.

    - ``rule="tokens_per_param"``: D = k·N, so N = sqrt(C / (6·k)) (k ≈ 20).
    - ``rule="fit"``: minimize the parametric L(N, D) on the budget (Hoffmann et al. 2022, eq. 4):
      N = G·(C/6)^(β/(α+β)), D = (C/6)/N, G = (α·A / (β·B))^(1/(α+β)). This fit favours smaller models
      and more tokens than the 20-per-parameter rule (the paper's approaches 1-2 give about 20).
    """
    _positive(compute=compute)
    if rule == "tokens_per_param":
        n = math.sqrt(compute / (6.0 * tokens_per_param))
    elif rule == "fit":
        a, b = fit.alpha, fit.beta
        g = (a * fit.A / (b * fit.B)) ** (1.0 / (a + b))
        n = g * (compute / 6.0) ** (b / (a + b))
    else:
        raise ValueError(f"rule must be 'tokens_per_param' or 'fit', got {rule!r}")
    d = compute / (6.0 * n)
    return OptimalSize(compute=compute, n_params=n, tokens=d, loss=fit.loss(n, d))


def gpu_seconds(flops: float, peak_flops_per_s: float, mfu: float) -> float:
    """Device-seconds to do ``flops`` at a fraction ``mfu`` of peak: FLOPs / (peak·MFU)."""
    _positive(flops=flops, peak_flops_per_s=peak_flops_per_s)
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    return flops / (peak_flops_per_s * mfu)


def training_seconds(cfg: ModelConfig, tokens: float, *, peak_flops_per_s: float, mfu: float,
                     seq_len: int | None = None, devices: int = 1) -> float:
    """Wall-clock seconds to train ``cfg`` on ``tokens``: flops_per_token·D / (peak·MFU·devices).

    The MFU must be measured against the same FLOPs-per-token convention (:func:`flops_per_token`)
    and the same peak; a run that logs its own MFU gives both."""
    _positive(devices=devices)
    flops = flops_per_token(cfg, seq_len) * tokens
    return gpu_seconds(flops, peak_flops_per_s, mfu) / devices
