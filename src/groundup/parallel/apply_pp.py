"""Pipeline parallelism with ``torch.distributed.pipelining``: the blocks split into stages, one (or two) per rank.

**Stages.** The model's ``n_layer`` blocks are cut into ``pipeline_parallel x v`` consecutive stages, as evenly as
possible (the earlier stages take the extra block) or by the user's ``pipeline_split``; the token (and position)
embeddings belong to the first stage, the final norm and the head to the last. Schedules with one stage per rank
(GPipe, 1F1B) have v = 1; the interleaved and zero-bubble ones v = 2: rank r holds stages r and r + p
('loop' placement), ZBVZeroBubble stages r and 2p - 1 - r (the 'V').

**A rank's part of the model.** As torchtitan does, each rank keeps the whole ``Transformer`` class but only its
own pieces (:func:`model_part`): the blocks of its stages, kept in a ``ModuleList`` under their original
indices, the embeddings where it holds the first stage, the head where it holds the last. Parameter names are
those of the full model (``blocks.5.attn.qkv.weight``), so a DCP checkpoint written by 2 stages loads into 1 or
4, and the optimizer, gradient clipping and checkpoint code see one module per rank. Each stage's module (what
``PipelineStage`` runs) is again such a part, sharing its tensors with the rank's part. The model's forward runs
a part as it is (:meth:`Transformer.hidden_states`): hidden states in where the embeddings are missing, hidden
states out where the head is.

**Loss.** The last stage's module is given the targets and returns the micro-batch's mean loss (the same fused
loss as one process); the schedule scales the gradients by 1 / micro-batches, so a step's gradient is that of the
mean loss over the step's micro-batches, as accumulation computes it. The mean loss is summed over the 'pp'
group from the last stage (zero elsewhere), so every rank reports it.

**Micro-batches.** A step's rows on a data-parallel rank (batch_size x grad_accum / dp, the global batch's share)
are concatenated and split into ``pipeline_microbatches`` pieces (default: twice the stages' ranks, or fewer,
down to one per rank, when the rows do not divide into that many).

**Evaluation.** :class:`PipelineForward` runs a batch through the stages in order (point-to-point sends of the
hidden states) and hands every rank of the 'pp' group the logits: the one scorer runs unchanged on every rank.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from groundup.model.config import ModelConfig

log = logging.getLogger(__name__)

SCHEDULES = {"GPipe": 1, "1F1B": 1, "Interleaved1F1B": 2, "LoopedBFS": 2, "InterleavedZeroBubble": 2,
             "ZBVZeroBubble": 2}
"""The schedules offered (``torch.distributed.pipelining`` names) and the stages each runs per rank."""
V_SCHEDULES = ("ZBVZeroBubble",)
"""Schedules that place a rank's two stages in a V (r and 2p - 1 - r) rather than a loop (r and r + p)."""
FIRST_STAGE = ("tok_embeddings", "pos_embeddings")
LAST_STAGE = ("final_norm", "lm_head")
SHARED = ("dropout",)
"""The Transformer's children outside ``blocks``: on the first stage, on the last, on every stage (no weights)."""


def schedule_name(name: str) -> str:
    """The offered schedule ``name`` names (case-insensitive, with or without 'Schedule'), or a clear error."""
    wanted = name.lower().removeprefix("schedule")
    for known in SCHEDULES:
        if known.lower() == wanted:
            return known
    raise ValueError(f"parallel.pipeline_schedule={name!r} is not one of {', '.join(SCHEDULES)}")


def stages_per_rank(schedule: str) -> int:
    return SCHEDULES[schedule_name(schedule)]


def stage_sizes(n_layer: int, stages: int, split: list[int] | None = None) -> list[int]:
    """Blocks per stage: the user's ``split`` (checked), else as even as possible, the earlier stages first."""
    if split is not None:
        if len(split) != stages or sum(split) != n_layer or min(split) < 1:
            raise ValueError(f"parallel.pipeline_split={list(split)} must give {stages} stages of at least one block "
                             f"each, summing to the model's n_layer={n_layer}")
        return list(split)
    if n_layer < stages:
        raise ValueError(f"the model's n_layer={n_layer} does not split into {stages} pipeline stages (one block at "
                         f"least each): lower parallel.pipeline_parallel or use a schedule with one stage per rank")
    return [n_layer // stages + (1 if s < n_layer % stages else 0) for s in range(stages)]


def stage_ranks(schedule: str, pp: int) -> list[int]:
    """The 'pp' rank that runs each stage, in stage order."""
    name = schedule_name(schedule)
    v = SCHEDULES[name]
    if name in V_SCHEDULES:
        return [s if s < pp else 2 * pp - 1 - s for s in range(v * pp)]
    return [s % pp for s in range(v * pp)]


def check_model(config: ModelConfig, pp: int) -> None:
    """Model options pipeline parallelism cannot run, refused by name."""
    if pp == 1:
        return
    if config.tie_embeddings:
        raise ValueError("model.tie_embeddings=true ties the head to the embeddings, which pipeline parallelism puts "
                         f"on different stages (parallel.pipeline_parallel={pp}): set model.tie_embeddings=false")
    if config.moe_experts and ((config.moe_balance == "aux_loss" and config.moe_aux_loss_coef)
                               or config.moe_z_loss_coef):
        raise ValueError("model.moe_aux_loss_coef / model.moe_z_loss_coef: the routers' auxiliary losses of earlier "
                         f"stages do not reach the loss under parallel.pipeline_parallel={pp}; use "
                         "model.moe_balance=bias (loss-free balancing) with moe_z_loss_coef=0")


def needs_tokens(config: ModelConfig) -> bool:
    """Whether blocks after the first stage need the token ids (value embeddings read them)."""
    return any(config.has_value_embedding(layer) for layer in range(config.n_layer))


def model_part(model: nn.Module, layers: list[int], *, first: bool, last: bool) -> nn.Module:
    """A module of ``model``'s class holding (not copying) its blocks ``layers`` under their own indices, the
    embeddings if ``first``, the final norm and head if ``last``: parameter names are the full model's."""
    part = type(model).__new__(type(model))
    nn.Module.__init__(part)
    for key, value in vars(model).items():  # plain attributes (config, tensor_parallel, ...)
        if not key.startswith("_") and key != "training":
            setattr(part, key, value)
    part.train(model.training)
    for name, child in model.named_children():
        if name == "blocks":
            blocks = nn.ModuleList()
            for i in layers:
                blocks.add_module(str(i), child._modules[str(i)])
            part.blocks = blocks
        elif name in FIRST_STAGE:
            setattr(part, name, child if first else None)
        elif name in LAST_STAGE:
            setattr(part, name, child if last else None)
        elif name in SHARED or not any(True for _ in child.parameters()):
            setattr(part, name, child)
        else:
            raise ValueError(f"pipeline parallelism: no stage is known to hold the model's {name!r}")
    for name in (*FIRST_STAGE, *LAST_STAGE):
        if not hasattr(part, name):  # an optional part the model does not have (pos_embeddings)
            setattr(part, name, None)
    for name, buffer in model._buffers.items():
        part.register_buffer(name, buffer, persistent=name not in model._non_persistent_buffers_set)
    return part


@dataclass
class StageLayout:
    """Which stages this rank runs and which blocks each holds."""

    schedule: str
    pp: int
    pp_rank: int
    sizes: list[int]
    owners: list[int]
    """The 'pp' rank of each stage."""

    @property
    def num_stages(self) -> int:
        return len(self.sizes)

    @property
    def mine(self) -> list[int]:
        return [s for s, r in enumerate(self.owners) if r == self.pp_rank]

    def layers(self, stage: int) -> list[int]:
        start = sum(self.sizes[:stage])
        return list(range(start, start + self.sizes[stage]))


def stage_layout(config: ModelConfig, pp: int, pp_rank: int, schedule: str, split: list[int] | None) -> StageLayout:
    name = schedule_name(schedule)
    check_model(config, pp)
    stages = pp * SCHEDULES[name]
    return StageLayout(schedule=name, pp=pp, pp_rank=pp_rank, sizes=stage_sizes(config.n_layer, stages, split),
                       owners=stage_ranks(name, pp))


def rank_part(model: nn.Module, layout: StageLayout) -> nn.Module:
    """This rank's part of ``model``: every block of its stages, the embeddings and head where it holds the first
    and last stage (the rest of ``model`` is left to be freed)."""
    mine = layout.mine
    layers = sorted(i for s in mine for i in layout.layers(s))
    part = model_part(model, layers, first=0 in mine, last=layout.num_stages - 1 in mine)
    part.pipeline_part = True  # read by the checkpoint code (a plain checkpoint loads the part's own tensors)
    return part


def stage_modules(part: nn.Module, layout: StageLayout) -> list[nn.Module]:
    """One module per stage of this rank, holding the tensors of the rank's ``part``."""
    last = layout.num_stages - 1
    return [model_part(part, layout.layers(s), first=s == 0, last=s == last) for s in layout.mine]


def default_microbatches(rows: int, pp: int) -> int:
    """Twice the stages' ranks, or the largest count down to ``pp`` that divides ``rows``."""
    for m in range(2 * pp, pp - 1, -1):
        if m > 0 and rows % m == 0:
            return m
    raise ValueError(f"a pipeline step's {rows} rows per data-parallel rank (batch_size x grad_accum / dp) do not "
                     f"split into {pp}..{2 * pp} micro-batches: set parallel.pipeline_microbatches to a divisor of "
                     f"{rows}, or change batch_size or train.grad_accum")


def _loss_of_output(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return output  # the last stage's module computed the micro-batch's mean loss itself (given the targets)


PipelineInputs = Callable[[Any], tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], dict[str, float]]]
"""``batch -> (tokens (B, T), targets (B, T), keyword inputs for every stage (B, ...), extras)``."""


@dataclass(eq=False)
class Pipeline:
    """This rank's stages, the schedule that runs them, and the 'pp' group."""

    layout: StageLayout
    modules: list[nn.Module]
    """The stage modules this rank runs (FSDP-wrapped where data parallelism shards)."""
    group: Any
    device: torch.device
    microbatches: int = 0
    """``parallel.pipeline_microbatches`` (0: the default, chosen at the first step)."""
    pass_tokens: bool = False
    """Hand every stage the token ids (value embeddings)."""
    schedule: Any = None

    @property
    def first(self) -> bool:
        return 0 in self.layout.mine

    @property
    def last(self) -> bool:
        return self.layout.num_stages - 1 in self.layout.mine

    def _build(self, rows: int) -> None:
        from torch.distributed.pipelining import PipelineStage
        from torch.distributed.pipelining.schedules import PipelineScheduleSingle, get_schedule_class

        layout = self.layout
        m = self.microbatches or default_microbatches(rows, layout.pp)
        if rows % m:
            raise ValueError(f"parallel.pipeline_microbatches={m} does not divide a step's {rows} rows per "
                             "data-parallel rank (batch_size x grad_accum / dp)")
        stages = [PipelineStage(module, s, layout.num_stages, self.device, group=self.group)
                  for s, module in zip(layout.mine, self.modules, strict=True)]
        for stage in stages:
            _keep_moe_loads_through_metadata_inference(stage)
        cls = get_schedule_class(layout.schedule)
        try:
            if issubclass(cls, PipelineScheduleSingle):
                self.schedule = cls(stages[0], n_microbatches=m, loss_fn=_loss_of_output, scale_grads=True)
            else:
                self.schedule = cls(stages, n_microbatches=m, loss_fn=_loss_of_output, scale_grads=True)
        except ValueError as e:
            raise ValueError(f"parallel.pipeline_schedule={layout.schedule} with parallel.pipeline_microbatches={m} "
                             f"on {layout.pp} stage ranks: {e}") from e
        self.microbatches = m
        log.info("pipeline: %s, stages %s of %d on this rank (blocks %s), %d micro-batches of %d rows",
                 layout.schedule, layout.mine, layout.num_stages, [layout.layers(s) for s in layout.mine], m, rows // m)

    def forward_backward(self, batches: list[Any], inputs: PipelineInputs) -> tuple[float, dict[str, float]]:
        """One step's forward and backward over ``batches`` (concatenated, then split into the micro-batches)
        through the schedule; returns the mean loss (the same on every rank of the 'pp' group) and the mean
        extras."""
        parts = [inputs(batch) for batch in batches]
        tokens = torch.cat([p[0] for p in parts]).to(self.device)
        targets = torch.cat([p[1] for p in parts]).to(self.device)
        kwargs = {key: torch.cat([p[2][key] for p in parts]).to(self.device) for key in parts[0][2]}
        extras: dict[str, float] = {}
        for p in parts:
            for key, value in p[3].items():
                extras[key] = extras.get(key, 0.0) + float(value) / len(parts)
        if self.schedule is None:
            self._build(tokens.shape[0])
        if self.pass_tokens:
            kwargs["tokens"] = tokens
        losses: list[torch.Tensor] = []
        args = (tokens,) if self.first else ()
        if self.last:
            self.schedule.step(*args, target=targets, losses=losses, targets=targets, return_outputs=False, **kwargs)
        else:
            self.schedule.step(*args, return_outputs=False, **kwargs)
        mean = torch.zeros((), dtype=torch.float64, device=_comm_device(self.device))
        if self.last:
            mean += float(torch.stack([loss.detach().float() for loss in losses]).mean())
        dist.all_reduce(mean, group=self.group)  # from the last stage to every stage
        return float(mean), extras

    def forward(self, idx: torch.Tensor, **kwargs) -> torch.Tensor:
        """Logits (B, T, V) of token ids ``idx`` through every stage in order, on every rank of the 'pp' group
        (a collective of the group: its ranks call it with the same ``idx``)."""
        layout = self.layout
        x = idx
        B, T = idx.shape
        n_embd = self.modules[0].config.n_embd
        if self.pass_tokens:
            kwargs["tokens"] = idx
        mine = dict(zip(layout.mine, self.modules, strict=True))
        logits = None
        for s in range(layout.num_stages):
            if s not in mine:
                continue
            if s > 0 and layout.owners[s - 1] != layout.pp_rank:
                x = torch.empty(B, T, n_embd, dtype=torch.float32, device=self.device)
                dist.recv(x, group=self.group, group_src=layout.owners[s - 1])
            x = mine[s](x, **kwargs)
            if s < layout.num_stages - 1 and layout.owners[s + 1] != layout.pp_rank:
                dist.send(x.float().contiguous(), group=self.group, group_dst=layout.owners[s + 1])
        last_owner = layout.owners[-1]
        if layout.pp_rank == last_owner:
            logits = x.float().contiguous()
        else:
            logits = torch.empty(B, T, self.modules[0].config.vocab_size, dtype=torch.float32, device=self.device)
        dist.broadcast(logits, group=self.group, group_src=last_owner)
        return logits


def _keep_moe_loads_through_metadata_inference(stage) -> None:
    """The schedule's first step runs each stage once more to learn its shapes (torch's metadata inference),
    a later stage on uninitialised inputs, with gradients on: its MoE routers would count those tokens in
    their loads, which loss-free balancing and the metrics read. Wrap that forward so that it leaves the
    loads as it found them."""
    from groundup.model.moe import moe_layers

    infer = getattr(stage, "_forward_metadata_inference", None)
    layers = moe_layers(stage.submod)
    if infer is None or not layers:
        return

    def without_counting(*args, **kwargs):
        saved = [m.expert_load.clone() for m in layers]
        try:
            return infer(*args, **kwargs)
        finally:
            for m, load in zip(layers, saved, strict=True):
                m.expert_load.copy_(load)

    stage._forward_metadata_inference = without_counting


class PipelineForward(nn.Module):
    """The whole model's forward (logits) over the pipeline, for evaluation: ``model(idx)`` on every rank."""

    def __init__(self, pipeline: Pipeline, part: nn.Module) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.config = part.config
        self.register_buffer("_device", torch.zeros((), device=pipeline.device), persistent=False)
        self._part = [part]  # not a child: no parameters of its own

    def train(self, mode: bool = True) -> PipelineForward:
        for module in (self._part[0], *self.pipeline.modules):
            module.train(mode)
        return super().train(mode)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if targets is not None:
            raise ValueError("the pipeline's evaluation forward gives logits; compute losses from them")
        return self.pipeline.forward(idx, **kwargs)


def _comm_device(device: torch.device) -> torch.device:
    return device if device.type == "cuda" else torch.device("cpu")


def clip_group_norm_sq(total_sq: torch.Tensor, pipeline: Pipeline) -> torch.Tensor:
    """The squared gradient norm of this rank's stages summed over the 'pp' group: the whole model's."""
    summed = total_sq.to(_comm_device(pipeline.device))
    dist.all_reduce(summed, group=pipeline.group)
    return summed.cpu()


def gather_stage_states(state: dict[str, torch.Tensor], group) -> dict[str, torch.Tensor]:
    """Every stage's full state dict (already gathered over the other mesh dimensions), merged on every rank of
    the 'pp' group (CPU tensors through ``all_gather_object``)."""
    gathered: list[dict | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, {k: v.detach().cpu() for k, v in state.items()}, group=group)
    merged: dict[str, torch.Tensor] = {}
    for part in gathered:
        merged.update(part or {})
    return merged
