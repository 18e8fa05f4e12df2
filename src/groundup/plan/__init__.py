"""Planning calculators: parameters, FLOPs, memory, time, cost, parallel layouts and inference speed, before
anything is trained.

Pure functions of a :class:`~groundup.model.config.ModelConfig` and a few numbers; ``groundup plan``
(:mod:`groundup.plan.run`) puts them together into one table, ``plan.json`` and ``plan.png``.
"""

from groundup.plan.compute import (
    chinchilla_tokens,
    flops_per_token,
    forward_flops_per_token,
    loss_optimal,
    megatron_step_flops,
    training_flops,
    training_seconds,
)
from groundup.plan.hardware import HARDWARE, LINKS, Accelerator, get_accelerator, measure_cpu_matmul_flops
from groundup.plan.inference import decode_bound, kv_cache_bytes, kv_cache_bytes_per_token, weight_memory
from groundup.plan.interconnect import all_reduce_seconds, bus_bandwidth
from groundup.plan.memory import training_memory
from groundup.plan.parallelism import (
    Layout,
    bubble_fraction,
    communication,
    in_flight_microbatches,
    pipeline_memory,
)
from groundup.plan.params import ParameterCount, count_parameters

__all__ = [
    "HARDWARE",
    "LINKS",
    "Accelerator",
    "Layout",
    "ParameterCount",
    "all_reduce_seconds",
    "bubble_fraction",
    "bus_bandwidth",
    "chinchilla_tokens",
    "communication",
    "count_parameters",
    "decode_bound",
    "flops_per_token",
    "forward_flops_per_token",
    "get_accelerator",
    "in_flight_microbatches",
    "kv_cache_bytes",
    "kv_cache_bytes_per_token",
    "loss_optimal",
    "measure_cpu_matmul_flops",
    "megatron_step_flops",
    "pipeline_memory",
    "training_flops",
    "training_memory",
    "training_seconds",
    "weight_memory",
]
