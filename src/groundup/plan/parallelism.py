"""Pipeline, context, tensor, data and expert parallelism: bubbles, activations in flight, and how many
bytes each dimension moves per step.

Pipeline bubble (p stages, m micro-batches, v model chunks per rank; the share of a step's time a rank is
idle, with one micro-batch's forward + backward through one stage taking one unit):

    GPipe, 1F1B                (p − 1) / (m + p − 1)          Narayanan et al. 2021, section 2.2
    Interleaved1F1B, LoopedBFS (p − 1) / (v·m + p − 1)        Narayanan et al. 2021, section 2.2.2
    InterleavedZeroBubble      (p − 1) / (3·v·m + p − 1)      Qi et al. 2024 (ZB-H1 on interleaving)
    ZBVZeroBubble              0                              Qi et al. 2024, ZB-V

Narayanan et al. ("Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM",
SC 2021) write the bubble as a ratio to the ideal time, (p − 1)/m; the share of the whole step used
here is that ratio over one plus it. The zero-bubble figures follow Qi et al. ("Zero Bubble Pipeline
Parallelism", arXiv:2401.10241, ICLR 2024) under the paper's own assumption that forward, backward for
inputs and backward for weights take equal time (T_F = T_B = T_W): ZB-H1 fills two thirds of 1F1B's
bubble with the deferred weight gradients, (p − 1)(T_F + T_B − T_W) against (p − 1)(T_F + T_B + T_W),
at 1F1B's memory; ``InterleavedZeroBubble`` is torch's ZB1P, that on top of interleaving. ZB-V (two
chunks per rank in a V) and ZB-H2 reach a bubble of about zero under the same assumption; real models,
whose three phases differ, keep a little.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from groundup.model.config import ModelConfig
from groundup.plan.memory import ModelStates, activation_bytes, get_precision, model_state_bytes
from groundup.plan.params import count_parameters

SCHEDULES = ("GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble", "ZBVZeroBubble")
"""Schedule names, as torch.distributed.pipelining's classes without the 'Schedule' prefix."""

MULTI_CHUNK = ("Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble", "ZBVZeroBubble")
"""Schedules that place more than one model chunk (virtual stage) on each rank."""


def schedule_name(schedule: str) -> str:
    """The canonical spelling of ``schedule`` (case-insensitive, an optional 'Schedule' prefix dropped)."""
    key = schedule.lower().removeprefix("schedule")
    for name in SCHEDULES:
        if name.lower() == key:
            return name
    raise ValueError(f"unknown pipeline schedule {schedule!r}; known: {', '.join(SCHEDULES)}")


def _check_pipeline(schedule: str, stages: int, microbatches: int, virtual_stages: int) -> str:
    name = schedule_name(schedule)
    if stages < 1:
        raise ValueError(f"pipeline stages must be >= 1, got {stages}")
    if microbatches < 1:
        raise ValueError(f"pipeline micro-batches must be >= 1, got {microbatches}")
    if virtual_stages < 1:
        raise ValueError(f"virtual stages per rank must be >= 1, got {virtual_stages}")
    if name not in MULTI_CHUNK and virtual_stages != 1:
        raise ValueError(f"schedule {name} runs one stage per rank; virtual_stages must be 1, got {virtual_stages}")
    if name == "ZBVZeroBubble" and virtual_stages not in (1, 2):
        raise ValueError(f"schedule ZBVZeroBubble runs exactly two stages per rank; virtual_stages must be 2, "
                         f"got {virtual_stages}")
    return name


def bubble_fraction(schedule: str, stages: int, microbatches: int, virtual_stages: int = 1) -> float:
    """Share of a pipeline step a rank is idle: (p − 1)/(m + p − 1) for GPipe and 1F1B, (p − 1)/(v·m + p − 1)
    interleaved, a third of that with the zero-bubble interleaved schedule, 0 for ZB-V (see the module).

    ``schedule`` is a torch.distributed.pipelining class name without 'Schedule' (case-insensitive);
    ``virtual_stages`` the model chunks per rank (ZBVZeroBubble always has two). One stage has no bubble.
    """
    name = _check_pipeline(schedule, stages, microbatches, virtual_stages)
    p, m, v = stages, microbatches, virtual_stages
    if p == 1 or name == "ZBVZeroBubble":
        return 0.0
    if name in ("GPipe", "1F1B"):
        return (p - 1) / (m + p - 1)
    if name in ("Interleaved1F1B", "LoopedBFS"):
        return (p - 1) / (v * m + p - 1)
    # InterleavedZeroBubble (ZB1P): each chunk's warm-up and cool-down idle (T_F + T_B − T_W) of (T_F + T_B + T_W).
    return (p - 1) / (3 * v * m + p - 1)


def in_flight_microbatches(schedule: str, stages: int, microbatches: int, virtual_stages: int = 1,
                           rank: int = 0) -> float:
    """Micro-batches whose activations pipeline rank ``rank`` holds at its peak, counted in whole micro-batches
    through all of the rank's layers (one micro-batch through one of its v chunks counts 1/v).

    - GPipe and LoopedBFS run every forward before any backward: all m.
    - 1F1B (and ZB-H1): rank r starts its first backward after p − r forwards: min(m, p − r) (Narayanan et
      al. 2021, section 2.2.1); ZB-V keeps the same peak, p, on every rank (Qi et al.).
    - Interleaved1F1B (and InterleavedZeroBubble): Megatron's warm-up, 2·(p − r − 1) + (v − 1)·p chunk
      forwards, plus the one in flight, capped at v·m; on the first rank p + (p − 1)/v, the
      L·(1 + (p − 1)/(p·v)) layers' worth of Korthikanti et al. 2022, section 4.2.3.
    """
    name = _check_pipeline(schedule, stages, microbatches, virtual_stages)
    p, m, v = stages, microbatches, virtual_stages
    if not 0 <= rank < p:
        raise ValueError(f"rank must be in [0, {p}), got {rank}")
    if name in ("GPipe", "LoopedBFS"):
        return float(m)
    if name == "ZBVZeroBubble":
        return float(min(m, p))
    if name == "1F1B" or v == 1:
        return float(min(m, p - rank))
    chunks = min(v * m, 2 * (p - rank - 1) + (v - 1) * p + 1)
    return chunks / v


def virtual_stages_for(schedule: str, virtual_stages: int | None = None) -> int:
    """Model chunks per rank: the given number, else 2 for the multi-chunk schedules and 1 for the others."""
    name = schedule_name(schedule)
    if virtual_stages is not None:
        return virtual_stages
    return 2 if name in MULTI_CHUNK else 1


def head_rank(schedule: str, stages: int) -> int:
    """The pipeline rank holding the final norm and output head: the last, except in ZB-V's V shape, where
    rank 0 runs both the first and the last chunk."""
    return 0 if schedule_name(schedule) == "ZBVZeroBubble" else stages - 1


@dataclass(kw_only=True, frozen=True)
class Layout:
    """How the devices split the work: world = pp x dp x cp x tp (mesh order, outermost first); experts
    split over ep ranks drawn from dp x cp."""

    gpus: int
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    schedule: str = "1F1B"
    virtual_stages: int = 1
    microbatches: int = 1
    sequence_parallel: bool = False

    @property
    def dp(self) -> int:
        return self.gpus // (self.tp * self.pp * self.cp)

    @property
    def data_group(self) -> int:
        """Ranks holding the same (non-expert) weights: gradients are reduced, and ZeRO shards, across dp x cp."""
        return self.dp * self.cp

    def as_dict(self) -> dict:
        return {**asdict(self), "schedule": schedule_name(self.schedule), "dp": self.dp,
                "data_group": self.data_group}


def check_layout(model: ModelConfig, layout: Layout, *, seq_len: int) -> None:
    """One error naming every setting that does not fit the model or the device count."""
    problems = []
    for name in ("gpus", "tp", "pp", "cp", "ep", "virtual_stages", "microbatches"):
        if getattr(layout, name) < 1:
            problems.append(f"{name} must be >= 1, got {getattr(layout, name)}")
    if problems:
        raise ValueError("invalid parallel layout: " + "; ".join(problems))
    product = layout.tp * layout.pp * layout.cp
    if layout.gpus % product:
        problems.append(f"tp x pp x cp = {layout.tp} x {layout.pp} x {layout.cp} = {product} does not divide "
                        f"gpus={layout.gpus}")
    v = layout.virtual_stages
    try:
        _check_pipeline(layout.schedule, layout.pp, layout.microbatches, v)
    except ValueError as e:
        problems.append(str(e))
    chunks = layout.pp * v
    if model.n_layer % chunks:
        problems.append(f"n_layer={model.n_layer} does not split into pp={layout.pp} stages"
                        + (f" x {v} virtual stages" if v > 1 else "") + f" ({chunks} equal chunks)")
    if layout.cp > 1 and seq_len % (2 * layout.cp):
        problems.append(f"seq_len={seq_len} is not divisible by 2 x cp = {2 * layout.cp} (context parallelism "
                        f"gives each rank a head and a tail chunk)")
    for name, value in (("n_head", model.n_head), ("n_kv_head", model.kv_heads), ("mlp_hidden", model.mlp_hidden)):
        if value % layout.tp:
            problems.append(f"tp={layout.tp} does not divide {name}={value}")
    if layout.ep > 1:
        if model.moe_experts == 0:
            problems.append(f"ep={layout.ep} needs a mixture-of-experts model (moe_experts is 0)")
        elif model.moe_experts % layout.ep:
            problems.append(f"ep={layout.ep} does not divide moe_experts={model.moe_experts}")
        if not problems and layout.data_group % layout.ep:
            problems.append(f"ep={layout.ep} does not divide dp x cp = {layout.data_group} (experts are split over "
                            f"data- and context-parallel ranks)")
    if problems:
        raise ValueError("invalid parallel layout: " + "; ".join(problems))


@dataclass(kw_only=True, frozen=True)
class RankParameters:
    """Parameters one device holds."""

    layers: int
    """Transformer blocks on this pipeline rank."""
    dense: float
    """Non-expert parameters on the device (after tensor parallelism)."""
    experts: float
    """Routed-expert parameters on the device (after expert parallelism)."""
    largest_unit: float
    """The largest FSDP unit (a block or an embedding table) on the device, for ZeRO-3's gathered copies."""

    @property
    def total(self) -> float:
        return self.dense + self.experts


def rank_parameters(model: ModelConfig, layout: Layout, rank: int = 0) -> RankParameters:
    """Parameters on one device of pipeline rank ``rank``: its L/pp blocks, attention and MLP split tp ways
    (norms and embeddings replicated, as groundup's tensor parallelism does), routed experts split ep ways;
    the token (and learned position) embeddings on rank 0, the final norm and head on the head rank (a tied
    head becomes a copy there when pp > 1). Per-block figures are the model's averages (a model whose first
    blocks are dense has them spread evenly here)."""
    c = count_parameters(model)
    L, t = model.n_layer, layout.tp
    layers = L // layout.pp
    experts_per_layer = c.routed_experts / L
    blocks_dense = c.attention / L / t + (c.mlp - c.routed_experts) / L / t + (c.norms - c.final_norm) / L
    blocks_dense += (c.value_embeddings + c.value_gates) / L
    dense = layers * blocks_dense
    experts = layers * experts_per_layer / layout.ep
    embed = c.token_embeddings + c.position_embeddings
    head = c.final_norm + (c.lm_head or c.token_embeddings)
    units = [blocks_dense + experts_per_layer / layout.ep]
    if layout.pp == 1:
        dense += embed + c.final_norm + c.lm_head
        units += [embed, c.lm_head]
    else:
        if rank == 0:
            dense += embed
            units.append(embed)
        if rank == head_rank(layout.schedule, layout.pp):
            dense += head
            units.append(head)
    return RankParameters(layers=layers, dense=dense, experts=experts, largest_unit=max(units))


@dataclass(kw_only=True, frozen=True)
class RankMemory:
    """Training memory of one device of one pipeline rank."""

    rank: int
    """Pipeline rank."""
    role: str
    """'first', 'last', 'first and last' or 'only' (no pipeline)."""
    layers: int
    parameters: float
    states: ModelStates
    in_flight: float
    """Micro-batches of activations held at the peak (see :func:`in_flight_microbatches`)."""
    activations: float
    """Blocks' stored activations at the peak, plus the head's on the head rank."""
    gathered_weights: float
    """ZeRO-3: the unsharded unit being computed and the one prefetched."""
    device_memory: float | None

    @property
    def total(self) -> float:
        return self.states.total + self.activations + self.gathered_weights

    @property
    def fits(self) -> bool | None:
        return None if self.device_memory is None else self.total <= self.device_memory

    def as_dict(self) -> dict:
        return {"rank": self.rank, "role": self.role, "layers": self.layers, "parameters": self.parameters,
                **asdict(self.states), "model_states": self.states.total, "in_flight": self.in_flight,
                "activations": self.activations, "gathered_weights": self.gathered_weights, "total": self.total,
                "device_memory": self.device_memory, "fits": self.fits}


def rank_memory(model: ModelConfig, layout: Layout, rank: int = 0, *, precision: str = "bf16-mixed",
                sharding: str = "ddp", micro_batch: int = 1, seq_len: int | None = None,
                activation_checkpointing: bool = False, flash_attention: bool = True,
                device_memory: float | None = None) -> RankMemory:
    """Memory per device on pipeline rank ``rank``: the model states of its parameters (ZeRO sharding over
    dp x cp, experts over dp x cp / ep) and the activations of the micro-batches its schedule keeps in
    flight, each micro-batch's divided by tp (and sequence parallelism) and cp as :func:`memory.activation_bytes`
    says."""
    s = seq_len or model.block_size
    check_layout(model, layout, seq_len=s)
    prec = get_precision(precision)
    params = rank_parameters(model, layout, rank)
    group = layout.data_group
    dense = model_state_bytes(params.dense, precision=precision, sharding=sharding, gpus=group)
    states = dense
    if params.experts:
        ex = model_state_bytes(params.experts, precision=precision, sharding=sharding, gpus=group // layout.ep)
        states = ModelStates(**{k: getattr(dense, k) + getattr(ex, k) for k in asdict(dense)})
    acts = activation_bytes(model, micro_batch=micro_batch, seq_len=s, bytes_per_value=prec.activations,
                            checkpointing=activation_checkpointing, flash_attention=flash_attention,
                            tensor_parallel=layout.tp, sequence_parallel=layout.sequence_parallel,
                            context_parallel=layout.cp, layers=params.layers)
    held = in_flight_microbatches(layout.schedule, layout.pp, layout.microbatches, layout.virtual_stages, rank)
    # With checkpointing each micro-batch in flight keeps its blocks' inputs; one block is recomputed at a time.
    working = acts.per_layer if activation_checkpointing else 0.0
    activations = held * (acts.layers - working) + working
    last = head_rank(layout.schedule, layout.pp)
    if rank == last:
        activations += acts.head * in_flight_microbatches(layout.schedule, layout.pp, layout.microbatches,
                                                          layout.virtual_stages, last)
    gathered = 0.0
    if sharding in ("zero3", "fsdp") and group > 1:
        gathered = 2.0 * params.largest_unit * prec.weights * (1 - 1 / group)
    p = layout.pp
    role = "only" if p == 1 else "first and last" if rank == 0 == last else \
        "first" if rank == 0 else "last" if rank == last else "middle"
    return RankMemory(rank=rank, role=role, layers=params.layers, parameters=params.total, states=states,
                      in_flight=held, activations=activations, gathered_weights=gathered,
                      device_memory=device_memory)


def pipeline_memory(model: ModelConfig, layout: Layout, **kwargs) -> list[RankMemory]:
    """:func:`rank_memory` of the first and last pipeline ranks (one entry without a pipeline, or with ZB-V,
    whose rank 0 is both); the largest of them is the layout's memory per device."""
    ranks = sorted({0, head_rank(layout.schedule, layout.pp)})
    return [rank_memory(model, layout, r, **kwargs) for r in ranks]


@dataclass(kw_only=True, frozen=True)
class Traffic:
    """What one parallel dimension moves per optimizer step, per device."""

    dimension: str
    """'dp', 'tp', 'pp', 'cp' or 'ep'."""
    collective: str
    """What moves it (all-reduce, all-gather + reduce-scatter, send/recv, ring K/V exchange, all-to-all)."""
    group: int
    """Ranks taking part."""
    bytes_per_step: float
    """Bytes each device sends per optimizer step (nccl-tests' bus convention: a ring all-reduce of S
    bytes over n ranks sends 2(n−1)/n·S per device; it receives as much)."""
    calls_per_step: int
    """Collectives (or send/recv pairs) per step."""
    formula: str
    """The count, in symbols."""


def ring_kv_bytes(model: ModelConfig, *, cp: int, micro_batch: int, seq_len: int, bytes_per_value: int = 2,
                  tp: int = 1) -> float:
    """Bytes one device sends to pass K and V round the context-parallel ring once, for one layer's forward:
    (cp − 1) blocks of its b·s/cp tokens' keys and values, (cp − 1)/cp · 2·b·s·h_kv·a with h_kv =
    n_kv_head·head_dim (over tp when the heads are split)."""
    h_kv = model.kv_heads * model.head_dim / tp
    return (cp - 1) / cp * 2 * micro_batch * seq_len * h_kv * bytes_per_value


def cp_overlap_min_tokens(model: ModelConfig, *, flops_per_s: float, link_bytes_per_s: float,
                          bytes_per_value: int = 2) -> float:
    """The shortest chunk s/cp for which each ring step's K/V transfer hides behind that step's attention.

    A step sends one K/V block, 2·b·c·h_kv·a bytes for c = s/cp tokens, while it computes one block pair of
    attention, 4·b·c²·h FLOPs (QKᵀ and PV; h = n_head·head_dim). Communication hides when
    2·b·c·h_kv·a / B ≤ 4·b·c²·h / F, that is c ≥ F·a·h_kv / (2·B·h), with F the FLOP/s attention
    actually reaches and B the link's bytes/s per direction: the c ≥ F/B of Liu et al. 2023 ("Ring
    Attention with Blockwise Transformers"), with the K/V width and the 16-bit bytes made explicit. A causal
    mask skips about half of the block pairs' work, so in practice double it.
    """
    if flops_per_s <= 0 or link_bytes_per_s <= 0:
        raise ValueError(f"flops_per_s and link_bytes_per_s must be positive, got {flops_per_s}, {link_bytes_per_s}")
    h, h_kv = model.n_head * model.head_dim, model.kv_heads * model.head_dim
    return flops_per_s * bytes_per_value * h_kv / (2 * link_bytes_per_s * h)


def communication(model: ModelConfig, layout: Layout, *, precision: str = "bf16-mixed", sharding: str = "ddp",
                  micro_batch: int = 1, seq_len: int | None = None,
                  activation_checkpointing: bool = False) -> list[Traffic]:
    """Bytes each device sends per optimizer step, for each dimension of degree > 1 (data parallelism
    whenever dp x cp > 1; expert parallelism only on a MoE model). A step is ``layout.microbatches``
    micro-batches of ``micro_batch`` sequences of ``seq_len``; b·s·h below is one micro-batch's hidden
    states on the device (s/cp tokens under context parallelism), a the activations' bytes per value,
    Ψ the device's parameters (after tp, pp and ep), m the micro-batches, L_r the device's blocks.

    - dp, DDP and ZeRO-1/2: one all-reduce of the gradients, 2(n−1)/n·Ψ·g (ZeRO-1/2's reduce-scatter plus
      all-gather moves the same). ZeRO-3/FSDP: the weights all-gathered in every micro-batch's forward and
      again in its backward, the gradients reduce-scattered once: (2m·w + g)·(n−1)/n·Ψ, 3(n−1)/n·Ψ·bytes
      for m = 1 (Rajbhandari et al. 2020, section 7). n = dp x cp; experts over dp x cp / ep.
    - tp (Megatron, Shoeybi et al. 2019): 2 all-reduces of b·s·h per block in forward (after attention and
      after the MLP) and 2 in backward, 2(t−1)/t each; full recomputation runs the forward's 2 again.
      With sequence parallelism each all-reduce is an all-gather plus a reduce-scatter of the same volume
      (Korthikanti et al. 2022, section 4.2.2).
    - pp: a stage sends its output activations b·s·h·a forward and receives their gradients back, per
      micro-batch and chunk boundary: 2·v·m·b·s·h·a on a middle rank (sent and received; divided by tp under
      sequence parallelism).
    - cp (ring attention, torch's context_parallel): per block and micro-batch K/V go round the ring in
      forward, (cp−1)/cp·2·b·s·h_kv·a; backward rotates K/V again and passes the dK/dV accumulators a full
      lap in fp32, cp·2·(b·s/cp)·h_kv·4; recomputation adds a forward's.
    - ep: per MoE block and micro-batch two all-to-alls of the k routed copies of each token in forward
      (dispatch and combine), two in backward: 4·(n−1)/n·k·b·s·h·a, n = ep.
    """
    s = seq_len or model.block_size
    check_layout(model, layout, seq_len=s)
    prec = get_precision(precision)
    a, w, g = prec.activations, prec.weights, prec.gradients
    m, b, v = layout.microbatches, micro_batch, layout.virtual_stages
    tokens = b * s / layout.cp
    h = model.n_embd
    params = rank_parameters(model, layout, 0)
    L_r = params.layers
    recompute = 1 if activation_checkpointing else 0
    out: list[Traffic] = []

    n = layout.data_group
    groups = [(n, params.dense)]
    if params.experts:
        groups.append((n // layout.ep, params.experts))
    zero3 = sharding in ("zero3", "fsdp")
    dp_bytes = 0.0
    for size, psi in groups:
        if size > 1:
            frac = (size - 1) / size
            dp_bytes += (2 * m * w + g) * frac * psi if zero3 else 2 * frac * psi * g
    if n > 1:
        out.append(Traffic(
            dimension="dp", group=n, bytes_per_step=dp_bytes,
            collective="all-gather (forward, backward) + reduce-scatter" if zero3 else "all-reduce",
            calls_per_step=(2 * m + 1) if zero3 else 1,
            formula="(2m·w + g)·(n−1)/n·Ψ" if zero3 else "2(n−1)/n·Ψ·g"))

    t = layout.tp
    if t > 1:
        per_call = 2 * (t - 1) / t * tokens * h * a
        calls = (4 + 2 * recompute) * L_r * m
        out.append(Traffic(
            dimension="tp", group=t, bytes_per_step=calls * per_call, calls_per_step=calls,
            collective="all-gather + reduce-scatter" if layout.sequence_parallel else "all-reduce",
            formula=f"{4 + 2 * recompute}·L_r·m · 2(t−1)/t·b·s·h·a"))

    if layout.pp > 1:
        boundary = tokens * h * a / (t if layout.sequence_parallel else 1)
        out.append(Traffic(
            dimension="pp", group=layout.pp, bytes_per_step=2 * v * m * boundary, calls_per_step=2 * v * m,
            collective="send/recv (activations forward, gradients back)", formula="2·v·m·b·s·h·a"))

    cp = layout.cp
    if cp > 1:
        kv = ring_kv_bytes(model, cp=cp, micro_batch=b, seq_len=s, bytes_per_value=a, tp=t)
        dkv = 2 * b * s * model.kv_heads * model.head_dim / t * 4
        per_layer = (2 + recompute) * kv + dkv
        out.append(Traffic(
            dimension="cp", group=cp, bytes_per_step=L_r * m * per_layer,
            calls_per_step=L_r * m * ((2 + recompute) * (cp - 1) + cp),
            collective="ring send/recv of K/V (and dK/dV in backward)",
            formula=f"L_r·m·({2 + recompute}·(cp−1)/cp·2·b·s·h_kv·a + 2·b·s·h_kv·4)"))

    ep = layout.ep
    if model.moe_experts and ep > 1:
        moe_layers = sum(model.is_moe_layer(i) for i in range(model.n_layer)) / layout.pp
        per_call = (ep - 1) / ep * model.moe_top_k * tokens * h * a
        calls = round(4 * moe_layers * m)
        out.append(Traffic(
            dimension="ep", group=ep, bytes_per_step=calls * per_call, calls_per_step=calls,
            collective="all-to-all (dispatch and combine)", formula="4·L_moe·m·(n−1)/n·k·b·s·h·a"))
    return out
