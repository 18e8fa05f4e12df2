"""Training memory per device: model states by precision and sharding, plus activations.

Model states follow Rajbhandari et al. 2020 ("ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models"), figure 1: mixed-precision Adam keeps 2 bytes of 16-bit weights, 2 of 16-bit
gradients and K = 12 of fp32 optimizer state (master weights 4, momentum 4, variance 4) per parameter,
16 in all, so a 7B model needs about 112 GB before sharding. Across N devices:

    DDP      (2 + 2 + K)·Ψ            every device holds everything
    ZeRO-1   2Ψ + 2Ψ + K·Ψ/N          optimizer states sharded
    ZeRO-2   2Ψ + (2 + K)·Ψ/N         ... and gradients
    ZeRO-3   (2 + 2 + K)·Ψ/N          ... and weights (PyTorch FSDP's full sharding)

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models"), section 4.1: a GPT block stores s·b·h·(34 + 5·a·s/h) bytes in 16-bit; the count here is
that derivation term by term, generalized to grouped-query attention, SwiGLU, fused attention
kernels and absent dropout, and it reproduces the 34 + 5·a·s/h figure for a GPT block.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from groundup.model.config import ModelConfig
from groundup.plan.params import count_parameters


@dataclass(kw_only=True, frozen=True)
class Precision:
    """Bytes per parameter of each model state, and per value of an activation."""

    name: str
    """Key in PRECISIONS."""
    weights: int
    """The weights the forward pass reads."""
    gradients: int
    """Gradients, in the weights' format."""
    master_weights: int
    """An fp32 copy the optimizer updates (mixed precision only)."""
    optimizer_states: int
    """AdamW's first and second moments."""
    activations: int
    """Bytes per stored activation value."""
    description: str
    """In words."""

    @property
    def bytes_per_param(self) -> int:
        return self.weights + self.gradients + self.master_weights + self.optimizer_states


PRECISIONS: dict[str, Precision] = {p.name: p for p in [
    # Plain fp32 AdamW: weights 4, gradients 4, m and v 4 each = 16 B/param. (The seeds' table says
    # 4 + 4 + 12 = 20, reusing ZeRO's K = 12, which already includes an fp32 master copy that fp32
    # training does not have.)
    Precision(name="fp32", weights=4, gradients=4, master_weights=0, optimizer_states=8, activations=4,
              description="fp32 weights, gradients and AdamW states"),
    # torch.autocast over fp32 parameters: the states of fp32 training, activations in 16 bits.
    Precision(name="amp", weights=4, gradients=4, master_weights=0, optimizer_states=8, activations=2,
              description="fp32 parameters, bf16 autocast activations"),
    Precision(name="bf16-mixed", weights=2, gradients=2, master_weights=4, optimizer_states=8, activations=2,
              description="bf16 weights and gradients, fp32 master weights and AdamW states (ZeRO's 16 B)"),
    Precision(name="fp16-mixed", weights=2, gradients=2, master_weights=4, optimizer_states=8, activations=2,
              description="fp16 weights and gradients, fp32 master weights and AdamW states"),
    Precision(name="bf16", weights=2, gradients=2, master_weights=0, optimizer_states=4, activations=2,
              description="everything in bf16, AdamW states included (8 B/param)"),
]}

SHARDINGS = ("ddp", "zero1", "zero2", "zero3", "fsdp")
"""Data-parallel layouts; fsdp is PyTorch's name for ZeRO-3 (full sharding)."""


def get_precision(name: str) -> Precision:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; known: {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def _check_sharding(sharding: str) -> str:
    if sharding not in SHARDINGS:
        raise ValueError(f"unknown sharding {sharding!r}; known: {', '.join(SHARDINGS)}")
    return "zero3" if sharding == "fsdp" else sharding


@dataclass(kw_only=True, frozen=True)
class ModelStates:
    """Bytes per device of each model state."""

    weights: float
    """16-bit (or fp32) weights."""
    gradients: float
    """Gradients."""
    master_weights: float
    """fp32 master copy of the weights (mixed precision)."""
    optimizer_states: float
    """AdamW moments."""

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.master_weights + self.optimizer_states


def model_state_bytes(n_params: float, *, precision: str = "bf16-mixed", sharding: str = "ddp",
                      gpus: int = 1) -> ModelStates:
    """Per-device bytes of weights, gradients, master weights and optimizer states (ZeRO, figure 1)."""
    if not n_params > 0:
        raise ValueError(f"n_params must be positive, got {n_params}")
    if gpus <= 0:
        raise ValueError(f"gpus must be positive, got {gpus}")
    p, stage = get_precision(precision), _check_sharding(sharding)
    weights_div = gpus if stage == "zero3" else 1
    grads_div = gpus if stage in ("zero2", "zero3") else 1
    optim_div = gpus if stage in ("zero1", "zero2", "zero3") else 1
    return ModelStates(
        weights=n_params * p.weights / weights_div,
        gradients=n_params * p.gradients / grads_div,
        master_weights=n_params * p.master_weights / optim_div,
        optimizer_states=n_params * p.optimizer_states / optim_div,
    )


@dataclass(kw_only=True, frozen=True)
class Activations:
    """Bytes of activations kept for the backward pass, for one micro-batch."""

    per_layer: float
    """One block's stored activations (without checkpointing)."""
    layers: float
    """All blocks together as stored: every block's activations, or with checkpointing every block's
    input plus one block's activations while it is recomputed."""
    head: float
    """Final norm, head input and the fp32 logits cross-entropy keeps."""

    @property
    def total(self) -> float:
        return self.layers + self.head


def activation_bytes(cfg: ModelConfig, *, micro_batch: int, seq_len: int | None = None,
                     bytes_per_value: int = 2, checkpointing: bool = False,
                     flash_attention: bool = True, tensor_parallel: int = 1, sequence_parallel: bool = False,
                     context_parallel: int = 1, layers: int | None = None) -> Activations:
    """Activations stored for backward, per micro-batch of ``micro_batch`` sequences of ``seq_len``.

    Per token and block, with a bytes per value, C width, q = n_head·head_dim, kv = n_kv_head·head_dim,
    H the MLP width (Korthikanti et al. 2022, section 4.1, term by term):

    - two norms keep their inputs: 2·C·a; the qkv projection its input: C·a; q, k, v: (q + 2·kv)·a (latent
      attention: every head's decompressed keys and values, and the two latents);
    - attention: a fused (flash) kernel keeps its output q·a and a log-sum-exp per head (4 bytes);
      an unfused one keeps the softmax n_head·s·a, with attention dropout also a mask n_head·s and the
      dropped-out copy n_head·s·a, and the output q·a;
    - MLP: input C·a, the up projection's output (2H for SwiGLU's gate and up, H for GELU)·a, the
      activation's output H·a (SwiGLU: silu(gate) and the product, 2H·a);
    - with dropout, one byte-mask of C per residual branch (two per block).

    For a GPT-2 block (H = 4C, MHA, dropout, unfused attention, a = 2) this is s·b·C·(34 + 5·n_head·s/C),
    Korthikanti's figure. Full activation checkpointing keeps each block's input (C·a per token) and
    recomputes one block at a time in backward.

    Per device under model parallelism (Korthikanti et al. 2022, sections 4.2.1-4.2.2): with
    ``tensor_parallel`` t the head-split and MLP-width terms are divided by t while the norm, qkv-input and
    MLP-input tensors and the dropout masks stay whole (s·b·h·(10 + 24/t + 5·a·s/(h·t)) for a GPT block);
    with ``sequence_parallel`` those are divided by t too (s·b·h·(34 + 5·a·s/h)/t), and so is the
    checkpointed block input. ``context_parallel`` cp gives each device s/cp of every sequence: every
    per-token term, the head's included, is divided by cp (context parallelism runs attention blockwise
    with a fused kernel, so it needs ``flash_attention``). ``layers``: the blocks counted (a pipeline
    stage's share; default all of them).

    Mixture-of-experts blocks (after the first ``moe_dense_layers``) count the MLP terms once for each of
    the k routed experts a token passes through and each shared expert, at the experts' width, plus the
    router's fp32 logits and the k dispatched copies of the token's input.
    """
    s = seq_len or cfg.block_size
    n_layer = cfg.n_layer if layers is None else layers
    if micro_batch <= 0 or s <= 0:
        raise ValueError(f"micro_batch and seq_len must be positive, got {micro_batch}, {s}")
    if tensor_parallel < 1 or context_parallel < 1 or n_layer < 0:
        raise ValueError(f"tensor_parallel and context_parallel must be >= 1 and layers >= 0, got "
                         f"{tensor_parallel}, {context_parallel}, {n_layer}")
    if context_parallel > 1 and not flash_attention:
        raise ValueError("context_parallel > 1 runs attention blockwise with a fused kernel: flash_attention must "
                         "be on")
    a, C, H = bytes_per_value, cfg.n_embd, cfg.mlp_hidden
    # Latent attention: keys and values decompressed for every head (query/key and value widths differ), plus the
    # q and kv latents the up projections keep.
    kv_heads = cfg.n_head if cfg.attention == "mla" else cfg.kv_heads
    q, k, v = cfg.n_head * cfg.query_key_dim, kv_heads * cfg.query_key_dim, kv_heads * cfg.value_dim
    out = cfg.n_head * cfg.value_dim
    latents = cfg.q_lora_rank + cfg.kv_lora_rank if cfg.attention == "mla" else 0
    dropout, attention_dropout = cfg.dropout > 0, cfg.attention_dropout > 0
    t = tensor_parallel
    whole = t if sequence_parallel else 1  # what the tensors plain TP keeps whole are divided by

    # Whole under plain tensor parallelism: the two norms' inputs, the qkv and MLP inputs, dropout masks.
    replicated = 2 * C * a + C * a + C * a + (2 * C if dropout else 0)
    split = (q + k + v + latents) * a  # heads are split across tensor-parallel ranks, and so is the MLP width
    if flash_attention:
        split += out * a + cfg.n_head * 4
    else:
        split += cfg.n_head * s * a + out * a
        if attention_dropout:
            split += cfg.n_head * s * (1 + a)
    swiglu = cfg.mlp == "swiglu"

    def mlp(width: int) -> int:  # the up projection's output and the activation's, per token through it
        return (2 * width if swiglu else width) * a * 2

    per_token = replicated / whole + (split + mlp(H)) / t
    tokens = micro_batch * s / context_parallel
    per_layer = tokens * per_token
    moe_layers = 0
    if cfg.moe_experts:
        # A mixture-of-experts block: each token passes through k routed experts and the shared ones, each of
        # width H_e; the router keeps its logits (E per token, fp32) and dispatch the k copies of each token.
        He = cfg.moe_expert_hidden
        moe_mlp = (cfg.moe_top_k + cfg.moe_shared_experts) * mlp(He) + cfg.moe_top_k * C * a + cfg.moe_experts * 4
        moe_layers = max(n_layer - min(cfg.moe_dense_layers, n_layer), 0)
        moe_per_layer = tokens * (replicated / whole + (split + moe_mlp) / t)
    if checkpointing:
        stored = n_layer * tokens * C * a / whole + (max(per_layer, moe_per_layer) if moe_layers else per_layer)
    else:
        stored = (n_layer - moe_layers) * per_layer + (moe_layers * moe_per_layer if moe_layers else 0)
    if moe_layers:
        per_layer = max(per_layer, moe_per_layer)
    # Final norm input and head input (C·a each), and the fp32 log-softmax output cross-entropy keeps.
    head = tokens * (2 * C * a + 4 * cfg.vocab_size)
    return Activations(per_layer=per_layer, layers=stored, head=head)


@dataclass(kw_only=True, frozen=True)
class TrainingMemory:
    """Bytes per device for one training configuration, and whether it fits."""

    n_params: int
    """Parameters of the model."""
    precision: str
    """Key of the precision used."""
    sharding: str
    """Data-parallel layout."""
    gpus: int
    """Devices the states are sharded across."""
    bytes_per_param: int
    """Model-state bytes per parameter before sharding (16 for mixed-precision AdamW)."""
    states: ModelStates
    """Model states per device."""
    activations: Activations
    """Activations per device for one micro-batch."""
    gathered_weights: float
    """ZeRO-3/FSDP: full (unsharded) weights of the unit being computed and the one prefetched."""
    device_memory: float | None
    """The device's memory in bytes, if one was named."""

    @property
    def total(self) -> float:
        return self.states.total + self.activations.total + self.gathered_weights

    @property
    def fits(self) -> bool | None:
        """Whether the total fits in the device's memory (before CUDA context and allocator slack,
        typically 1-3 GB more); None without a device."""
        return None if self.device_memory is None else self.total <= self.device_memory

    def as_dict(self) -> dict:
        return {
            "n_params": self.n_params, "precision": self.precision, "sharding": self.sharding, "gpus": self.gpus,
            "bytes_per_param": self.bytes_per_param,
            "weights": self.states.weights, "gradients": self.states.gradients,
            "master_weights": self.states.master_weights, "optimizer_states": self.states.optimizer_states,
            "model_states": self.states.total,
            "activations": self.activations.total, "activations_per_layer": self.activations.per_layer,
            "gathered_weights": self.gathered_weights, "total": self.total,
            "device_memory": self.device_memory, "fits": self.fits,
        }


def training_memory(cfg: ModelConfig, *, precision: str = "bf16-mixed", sharding: str = "ddp", gpus: int = 1,
                    micro_batch: int = 1, seq_len: int | None = None, activation_checkpointing: bool = False,
                    flash_attention: bool = True, device_memory: float | None = None) -> TrainingMemory:
    """Per-device training memory of ``cfg``: model states (ZeRO) plus activations (Korthikanti)."""
    count = count_parameters(cfg)
    p, stage = get_precision(precision), _check_sharding(sharding)
    states = model_state_bytes(count.total, precision=precision, sharding=stage, gpus=gpus)
    acts = activation_bytes(cfg, micro_batch=micro_batch, seq_len=seq_len, bytes_per_value=p.activations,
                            checkpointing=activation_checkpointing, flash_attention=flash_attention)
    gathered = 0.0
    if stage == "zero3" and gpus > 1:
        largest_unit = max(count.per_layer, count.token_embeddings, count.lm_head)
        gathered = 2.0 * largest_unit * p.weights * (1 - 1 / gpus)
    return TrainingMemory(n_params=count.total, precision=precision, sharding=stage, gpus=gpus,
                          bytes_per_param=p.bytes_per_param, states=states, activations=acts,
                          gathered_weights=gathered, device_memory=device_memory)


def breakdown(mem: TrainingMemory) -> dict[str, float]:
    """The bars of the memory plot: each component's bytes per device."""
    data = asdict(mem.states)
    data["activations"] = mem.activations.total
    if mem.gathered_weights:
        data["gathered_weights"] = mem.gathered_weights
    return data
