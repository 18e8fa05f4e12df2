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
