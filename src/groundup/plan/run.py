"""``groundup plan``: size, compute, memory, time, cost and inference speed of a model before training it.

    groundup plan --model gpt2-124m --tokens 10e9 --gpu h100 --gpus 8

prints one table and writes ``plan.json``, ``plan.png`` (memory bars, loss-optimal frontier),
``config.yaml`` and ``manifest.json`` into ``--out``. :func:`build_plan` does the arithmetic and no I/O.
"""

from __future__ import annotations

import dataclasses
import json as jsonlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from groundup.model.config import PRESETS, ModelConfig
from groundup.plan import compute, hardware, inference, interconnect, memory, parallelism
from groundup.plan.params import ParameterCount, count_parameters


@dataclass(kw_only=True)
class Config:
    """Plan a model before training it: parameters, FLOPs, memory, time, cost and inference speed."""

    model: str = "gpt2-124m"
    """A preset (gpt2-124m, gpt2-355m, gpt2-774m, gpt2-1.5b, tinyllama-1.1b, llama-2-7b, llama-3-8b, tiny-gpt2,
    tiny-llama), or a model dir, run dir or config.json holding ModelConfig fields."""
    n_layer: int | None = None
    """Override the model's number of blocks."""
    n_head: int | None = None
    """Override the model's query heads."""
    n_kv_head: int | None = None
    """Override the model's key/value heads (grouped-query attention)."""
    n_embd: int | None = None
    """Override the model's width."""
    vocab_size: int | None = None
    """Override the model's vocabulary size."""
    block_size: int | None = None
    """Override the model's context length."""
    intermediate_size: int | None = None
    """Override the model's MLP hidden width."""
    tie_embeddings: bool | None = None
    """Override whether the output head shares the token embedding."""
    tokens: float | None = None
    """Training tokens (e.g. 10e9); None: Chinchilla-optimal, 20 per parameter."""
    gpu: str = "h100-sxm"
    """Accelerator from the hardware table (a100, h100-sxm, h100-pcie, h200, b200, l4, a10g, t4, v100, mi300x,
    tpu-v4, tpu-v5e, gaudi2, gaudi3) or cpu (measured now)."""
    hardware: Path | None = None
    """A probe.json from `groundup probe`: plan with its measured matmul peak, memory bandwidth and all-reduce
    bus bandwidth (and the device's memory) instead of the table's figures for `gpu`."""
    gpus: int = 1
    """Devices training together: tp x pp x cp x dp, the data-parallel degree dp being what is left."""
    gpus_per_node: int = 8
    """Devices per node: beyond this the all-reduce crosses the network."""
    mfu: float = 0.4
    """Model FLOPs utilization expected (0.3-0.5 is typical for dense training on GPUs)."""
    peak_flops: float | None = None
    """Use this peak FLOP/s instead of the table's (e.g. a measured figure)."""
    bandwidth: float | None = None
    """Use this memory bandwidth in bytes/s instead of the table's."""
    price_per_gpu_hour: float = 2.0
    """Rental price of one device for one hour, in dollars."""
    power_watts: float | None = None
    """Power drawn per device in watts; None: the table's board power."""
    price_per_kwh: float = 0.10
    """Electricity price in dollars per kWh (the seeds' $100 per MWh)."""
    precision: Literal["fp32", "amp", "bf16-mixed", "fp16-mixed", "bf16"] = "bf16-mixed"
    """Training precision: which bytes per parameter the weights, gradients and AdamW states take."""
    sharding: Literal["ddp", "zero1", "zero2", "zero3", "fsdp"] = "ddp"
    """Data-parallel layout of the model states (fsdp is ZeRO-3)."""
    micro_batch: int = 8
    """Sequences per device per forward/backward pass."""
    seq_len: int | None = None
    """Training sequence length; None: the model's block_size."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (gradient accumulation); with pp > 1 the micro-batches each pipeline step
    runs (m)."""
    tp: int = 1
    """Tensor-parallel degree (`parallel.tensor_parallel`): attention heads and MLP width split this many ways."""
    pp: int = 1
    """Pipeline-parallel degree (`parallel.pipeline_parallel`): the blocks split into this many stages."""
    cp: int = 1
    """Context-parallel degree (`parallel.context_parallel`): each sequence split this many ways (ring attention)."""
    ep: int = 1
    """Expert-parallel degree (`parallel.expert_parallel`, MoE models): routed experts split over this many of
    the dp x cp ranks."""
    pp_schedule: str = "1F1B"
    """Pipeline schedule (`parallel.pipeline_schedule`): GPipe, 1F1B, Interleaved1F1B, LoopedBFS,
    InterleavedZeroBubble, ZBVZeroBubble."""
    pp_virtual_stages: int | None = None
    """Model chunks per pipeline rank; None: 2 for the interleaved, looped and ZB-V schedules, else 1."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism with tp: norms and dropout split along the sequence too (plans only;
    `groundup pretrain`'s tensor parallelism keeps them whole)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward instead of storing them."""
    flash_attention: bool = True
    """A fused attention kernel (no seq_len² scores stored)."""
    interconnect: str | None = None
    """Link between devices of a node (nvlink4, pcie5, dgx-h100-measured, ...); None: the GPU's own."""
    network: str = "ib-ndr"
    """Link between nodes, per device (ib-edr, ib-hdr, ib-ndr)."""
    inference_precision: Literal["fp32", "bf16", "fp16", "int8", "int4"] = "bf16"
    """Weight precision for the inference figures."""
    inference_batch: int = 1
    """Sequences decoded together."""
    context: int | None = None
    """Tokens in context for the KV cache and decode figures; None: block_size."""
    json: bool = False
    """Print plan.json to stdout instead of the table."""
    png: Path | None = None
    """Where to draw the plot; None: plan.png in out."""
    out: Path = Path("runs/plan")
    """Directory for plan.json, plan.png, config.yaml and manifest.json."""
    overwrite: bool = False
    """Write into a non-empty `out` that is not an earlier plan (plan.json, plan.png, config.yaml and
    manifest.json are replaced, nothing else is removed; `out` may never hold or lie inside the model's config)."""


MODEL_OVERRIDES = ("n_layer", "n_head", "n_kv_head", "n_embd", "vocab_size", "block_size", "intermediate_size",
                   "tie_embeddings")


def model_config_file(model: str) -> Path | None:
    """The config.json a plan reads: ``model`` itself, or the one in a model dir or a run dir's model/."""
    path = Path(model)
    return next((p for p in (path, path / "config.json", path / "model" / "config.json") if p.is_file()), None)


def resolve_model(cfg: Config) -> ModelConfig:
    """The ModelConfig a plan is about: a preset or a config.json, with the overrides applied."""
    base: ModelConfig
    if cfg.model in PRESETS:
        base = ModelConfig.from_name(cfg.model)
    else:
        found = model_config_file(cfg.model)
        if found is None:
            raise ValueError(f"unknown model {cfg.model!r}: not a preset ({', '.join(sorted(PRESETS))}) "
                             f"nor a config.json, model dir or run dir")
        data = jsonlib.loads(found.read_text(encoding="utf-8"))
        try:
            base = ModelConfig(**data)
        except TypeError as e:
            raise ValueError(f"{found}: not a groundup model config ({e})") from e
    overrides = {k: getattr(cfg, k) for k in MODEL_OVERRIDES if getattr(cfg, k) is not None}
    return dataclasses.replace(base, **overrides) if overrides else base


def data_parallel_degree(cfg: Config) -> int:
    """dp: the devices left once tp, pp and cp have their share (at least 1)."""
    return max(1, cfg.gpus // (cfg.tp * cfg.pp * cfg.cp))


def layout_for(cfg: Config) -> parallelism.Layout:
    return parallelism.Layout(gpus=cfg.gpus, tp=cfg.tp, pp=cfg.pp, cp=cfg.cp, ep=cfg.ep, schedule=cfg.pp_schedule,
                              virtual_stages=parallelism.virtual_stages_for(cfg.pp_schedule, cfg.pp_virtual_stages),
                              microbatches=cfg.grad_accum, sequence_parallel=cfg.sequence_parallel)


def check_config(cfg: Config, model: ModelConfig) -> None:
    problems = []
    for name in ("gpus", "gpus_per_node", "micro_batch", "grad_accum", "inference_batch", "tp", "pp", "cp", "ep"):
        if getattr(cfg, name) <= 0:
            problems.append(f"{name} must be positive, got {getattr(cfg, name)}")
    for name in ("tokens", "seq_len", "context", "peak_flops", "bandwidth", "power_watts"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            problems.append(f"{name} must be positive, got {value}")
    if not 0 < cfg.mfu <= 1:
        problems.append(f"mfu must be in (0, 1], got {cfg.mfu}")
    if cfg.price_per_gpu_hour < 0 or cfg.price_per_kwh < 0:
        problems.append("prices cannot be negative")
    for name in ("seq_len", "context"):
        value = getattr(cfg, name)
        if value is not None and value > model.block_size:
            problems.append(f"{name} ({value}) exceeds the model's block_size ({model.block_size})")
    if cfg.cp > 1 and not cfg.flash_attention:
        problems.append("cp > 1 needs flash_attention (ring attention is a blockwise, fused kernel)")
    if problems:
        raise ValueError("invalid plan config: " + "; ".join(problems))
    parallelism.check_layout(model, layout_for(cfg), seq_len=cfg.seq_len or model.block_size)


def peak_for(acc: hardware.Accelerator, precision: str) -> float:
    """fp32 training runs at the fp32 peak where the table has one; everything else at the 16-bit peak."""
    if precision == "fp32" and acc.peak_fp32_flops:
        return acc.peak_fp32_flops
    return acc.peak_flops


def build_plan(cfg: Config, model: ModelConfig, acc: hardware.Accelerator) -> dict[str, Any]:
    """Every figure of the plan, as plain data (what plan.json holds)."""
    check_config(cfg, model)
    count = count_parameters(model)
    seq_len = cfg.seq_len or model.block_size
    tokens = cfg.tokens if cfg.tokens is not None else compute.chinchilla_tokens(count.total)
    peak = peak_for(acc, cfg.precision)
    compute_figures = plan_compute(cfg, model, count, tokens, seq_len)
    sync = plan_gradient_sync(cfg, model, acc, count.total, seq_len, peak, compute_figures["tokens_per_step"])
    return {
        "model": {**dataclasses.asdict(model), "family": model.family},
        "parameters": count.as_dict(),
        "compute": compute_figures,
        "hardware": {**acc.as_dict(), "peak_used": peak},
        "time_cost": plan_time_cost(cfg, acc, compute_figures["training_flops"], tokens, peak, sync),
        "memory": plan_memory(cfg, model, acc, seq_len),
        "interconnect": {
            "link": "measured (probe)" if cfg.interconnect is None and acc.measured_bus_bandwidth else
                    cfg.interconnect or acc.link,
            "network": cfg.network if cfg.gpus > cfg.gpus_per_node else None,
            **dataclasses.asdict(sync),
        },
        "inference": plan_inference(cfg, model, acc, cfg.context or model.block_size),
        "parallelism": plan_parallelism(cfg, model, acc, seq_len, sync.compute_seconds, peak),
    }


def plan_compute(cfg: Config, model: ModelConfig, count: ParameterCount, tokens: float, seq_len: int) -> dict[str, Any]:
    """FLOPs of the whole training (6ND and the exact count), per token and per step, and the loss-optimal size."""
    n = count.active  # a mixture of experts: the parameters each token passes through (all of them when dense)
    flops_6nd = compute.training_flops(None, tokens, n_params=n)
    sequences_per_step = cfg.micro_batch * cfg.grad_accum * data_parallel_degree(cfg)
    tokens_per_step = sequences_per_step * seq_len
    megatron = compute.megatron_step_flops(model, sequences_per_step, seq_len)
    return {
        "tokens": tokens,
        "tokens_source": "given" if cfg.tokens is not None else "chinchilla (20 per parameter)",
        "tokens_per_param": tokens / n,
        "seq_len": seq_len,
        "flops_6nd": flops_6nd,
        "training_flops": compute.training_flops(model, tokens, seq_len=seq_len),
        "formula": "(6*N_matmul + 12*n_layer*seq_len*n_head*head_dim)*D",
        "matmul_params": count.matmul,
        "attention_flops": compute.attention_flops_per_token(model, seq_len) * 3 * tokens,
        "flops_per_token": compute.flops_per_token(model, seq_len),
        "forward_flops_per_token": compute.forward_flops_per_token(model, seq_len),
        "megatron_step_flops": megatron,
        "megatron_flops_per_token": megatron / tokens_per_step,
        "megatron_formula": "96*B*s*l*h^2*(1 + s/(6h) + V/(16*l*h)), with recomputation",
        "sequences_per_step": sequences_per_step,
        "tokens_per_step": tokens_per_step,
        "steps": tokens / tokens_per_step,
        "chinchilla_tokens": compute.chinchilla_tokens(n),
        "optimal_20_tokens_per_param": dataclasses.asdict(compute.loss_optimal(flops_6nd, rule="tokens_per_param")),
        "optimal_chinchilla_fit": dataclasses.asdict(compute.loss_optimal(flops_6nd, rule="fit")),
        "predicted_loss": compute.CHINCHILLA_FIT.loss(n, tokens),
    }


def plan_gradient_sync(cfg: Config, model: ModelConfig, acc: hardware.Accelerator, n_params: int, seq_len: int,
                       peak: float, tokens_per_step: int) -> interconnect.GradientSync:
    """The gradient all-reduce of one step over the node's links and the network, against the step's compute."""
    # A probe's all-reduce bus bandwidth between this node's devices stands for the node's link unless one is named.
    measured = acc.measured_bus_bandwidth if cfg.interconnect is None else None
    intra = measured or hardware.get_link(cfg.interconnect or acc.link).bandwidth
    inter = hardware.get_link(cfg.network).bandwidth
    layout = layout_for(cfg)
    if (cfg.tp, cfg.pp, cfg.cp, cfg.ep) != (1, 1, 1, 1):
        # Under model parallelism each device reduces the gradients of its own share, across dp x cp.
        n_params = parallelism.rank_parameters(model, layout, 0).total
    span = layout.data_group * cfg.tp
    busbw = interconnect.effective_bus_bandwidth(span, cfg.gpus_per_node, intra, inter)
    step_flops_per_device = compute.flops_per_token(model, seq_len) * tokens_per_step / cfg.gpus
    return interconnect.gradient_sync(n_params, gradient_bytes=memory.get_precision(cfg.precision).gradients,
                                      gpus=layout.data_group, bus_bandwidth_bytes_per_s=busbw,
                                      step_flops_per_device=step_flops_per_device, peak_flops=peak, mfu=cfg.mfu,
                                      sharding=cfg.sharding)


def plan_parallelism(cfg: Config, model: ModelConfig, acc: hardware.Accelerator, seq_len: int,
                     compute_seconds: float, peak: float) -> dict[str, Any]:
    """Memory per device of the first and last pipeline ranks, the pipeline bubble of the chosen and every
    schedule, and each dimension's bytes per step with the time they take on the links they cross."""
    layout = layout_for(cfg)
    ranks = parallelism.pipeline_memory(model, layout, precision=cfg.precision, sharding=cfg.sharding,
                                        micro_batch=cfg.micro_batch, seq_len=seq_len,
                                        activation_checkpointing=cfg.activation_checkpointing,
                                        flash_attention=cfg.flash_attention, device_memory=acc.memory_bytes)
    p, m = layout.pp, layout.microbatches
    bubble = parallelism.bubble_fraction(layout.schedule, p, m, layout.virtual_stages)
    schedules = {}
    for name in parallelism.SCHEDULES:
        v = layout.virtual_stages if name in parallelism.MULTI_CHUNK and layout.virtual_stages > 1 else \
            parallelism.virtual_stages_for(name)
        schedules[name] = {"virtual_stages": v, "bubble": parallelism.bubble_fraction(name, p, m, v),
                           "in_flight_first_rank": parallelism.in_flight_microbatches(name, p, m, v, 0)}
    measured = acc.measured_bus_bandwidth if cfg.interconnect is None else None
    intra = measured or hardware.get_link(cfg.interconnect or acc.link).bandwidth
    inter = hardware.get_link(cfg.network).bandwidth
    # Mesh ('pp', 'dp', 'cp', 'tp'), tp innermost: a dimension's group spans its degree times the inner ones.
    span = {"tp": cfg.tp, "cp": cfg.tp * cfg.cp, "ep": cfg.tp * cfg.ep, "dp": cfg.tp * layout.data_group,
            "pp": cfg.gpus}
    traffic = []
    for tr in parallelism.communication(model, layout, precision=cfg.precision, sharding=cfg.sharding,
                                        micro_batch=cfg.micro_batch, seq_len=seq_len,
                                        activation_checkpointing=cfg.activation_checkpointing):
        across = span[tr.dimension] > cfg.gpus_per_node
        bw = min(intra, inter) if across else intra
        seconds = tr.bytes_per_step / bw
        traffic.append({**dataclasses.asdict(tr), "across_nodes": across, "bandwidth": bw, "seconds": seconds,
                        "share_of_compute": seconds / compute_seconds if compute_seconds else None})
    a = memory.get_precision(cfg.precision).activations
    cp_figures = None
    if cfg.cp > 1:
        link = min(intra, inter) if span["cp"] > cfg.gpus_per_node else intra
        need = parallelism.cp_overlap_min_tokens(model, flops_per_s=peak * cfg.mfu, link_bytes_per_s=link,
                                                 bytes_per_value=a)
        chunk = seq_len / cfg.cp
        cp_figures = {"chunk_tokens": chunk, "overlap_min_tokens": need, "overlaps": chunk >= need,
                      "kv_bytes_per_layer_forward": parallelism.ring_kv_bytes(
                          model, cp=cfg.cp, micro_batch=cfg.micro_batch, seq_len=seq_len, bytes_per_value=a,
                          tp=cfg.tp)}
    worst = max(ranks, key=lambda r: r.total)
    return {
        "layout": layout.as_dict(),
        "ranks": [r.as_dict() for r in ranks],
        "memory_per_device": worst.total,
        "fits": worst.fits,
        "bubble": bubble,
        "step_stretch": 1 / (1 - bubble),
        "schedules": schedules,
        "communication": traffic,
        "context_parallel": cp_figures,
    }


def plan_time_cost(cfg: Config, acc: hardware.Accelerator, training_flops: float, tokens: float, peak: float,
                   sync: interconnect.GradientSync) -> dict[str, Any]:
    """Device hours, wall-clock time, rental cost and energy."""
    gpu_hours = compute.gpu_seconds(training_flops, peak, cfg.mfu) / 3600
    wall_hours = gpu_hours / cfg.gpus
    power = cfg.power_watts or acc.power_watts
    energy_kwh = gpu_hours * power / 1000 if power else None
    return {
        "mfu": cfg.mfu,
        "gpus": cfg.gpus,
        "gpu_hours": gpu_hours,
        "wall_clock_hours": wall_hours,
        # JSON has no infinity: None when communication alone would take forever.
        "wall_clock_hours_no_overlap": wall_hours / (1 - sync.share) if sync.share < 1 else None,
        "tokens_per_s": tokens / (wall_hours * 3600),
        "price_per_gpu_hour": cfg.price_per_gpu_hour,
        "cost": gpu_hours * cfg.price_per_gpu_hour,
        "power_watts": power,
        "energy_kwh": energy_kwh,
        "energy_cost": energy_kwh * cfg.price_per_kwh if energy_kwh is not None else None,
    }


def plan_memory(cfg: Config, model: ModelConfig, acc: hardware.Accelerator, seq_len: int) -> dict[str, Any]:
    """Training memory per device: the chosen layout, and every layout with and without checkpointing."""

    def mem(sharding: str, checkpointing: bool) -> memory.TrainingMemory:
        return memory.training_memory(model, precision=cfg.precision, sharding=sharding, gpus=cfg.gpus,
                                      micro_batch=cfg.micro_batch, seq_len=seq_len,
                                      activation_checkpointing=checkpointing,
                                      flash_attention=cfg.flash_attention, device_memory=acc.memory_bytes)

    layouts = {f"{s}{'+ckpt' if ckpt else ''}": mem(s, ckpt).as_dict()
               for s in ("ddp", "zero1", "zero2", "zero3") for ckpt in (False, True)}
    return {"chosen": mem(cfg.sharding, cfg.activation_checkpointing).as_dict(),
            "activation_checkpointing": cfg.activation_checkpointing, "layouts": layouts}


def plan_inference(cfg: Config, model: ModelConfig, acc: hardware.Accelerator, context: int) -> dict[str, Any]:
    """Weights and KV cache in memory, decode and prefill bounds, and the largest batch that fits."""
    ip = cfg.inference_precision
    kv_value = inference.kv_bytes_per_value(ip)
    decode = inference.decode_bound(model, bandwidth=acc.bandwidth, peak_flops=acc.peak_flops, precision=ip,
                                    batch=cfg.inference_batch, context=context)
    decode_empty = inference.decode_bound(model, bandwidth=acc.bandwidth, peak_flops=acc.peak_flops,
                                          precision=ip, batch=1, context=0)
    prefill = inference.prefill_bound(model, prompt_tokens=context, peak_flops=acc.peak_flops,
                                      bandwidth=acc.bandwidth, precision=ip)
    return {
        "precision": ip,
        "weights": {p: dataclasses.asdict(inference.weight_memory(model, p)) for p in inference.WEIGHT_BYTES},
        "kv_cache_bytes_per_token": inference.kv_cache_bytes_per_token(model, kv_value),
        "context": context,
        "batch": cfg.inference_batch,
        "kv_cache_bytes": inference.kv_cache_bytes(model, batch=cfg.inference_batch, context=context,
                                                   bytes_per_value=kv_value),
        "decode": dataclasses.asdict(decode),
        "decode_empty_cache": dataclasses.asdict(decode_empty),
        "prefill": dataclasses.asdict(prefill),
        "max_batch": inference.max_batch(model, device_memory=acc.memory_bytes, context=context, precision=ip),
    }


def accelerator_for(cfg: Config) -> hardware.Accelerator:
    """The table's entry for ``cfg.gpu``, or the measured one of the probe ``cfg.hardware``."""
    if cfg.hardware is None:
        return hardware.get_accelerator(cfg.gpu)
    probe = hardware.read_probe(cfg.hardware)
    return hardware.accelerator_from_probe(probe, source=str(cfg.hardware))


def run(cfg: Config) -> Path:
    """Print the plan, write plan.json, plan.png, config.yaml and manifest.json into ``cfg.out``."""
    from groundup import artifacts
    from groundup import config as config_io
    from groundup.plan import report

    artifacts.prepare_out(cfg.out, stage="plan", inputs=[None if cfg.model in PRESETS else model_config_file(cfg.model),
                                                         cfg.hardware],
                          overwrite=cfg.overwrite, unfinished=("plan.json", "plan.png", "config.yaml", ".*.tmp"))
    model = resolve_model(cfg)
    acc = hardware.with_overrides(accelerator_for(cfg), peak_flops=cfg.peak_flops, bandwidth=cfg.bandwidth)
    if cfg.peak_flops is not None and acc.peak_fp32_flops is not None:
        acc = dataclasses.replace(acc, peak_fp32_flops=cfg.peak_flops)
    plan = build_plan(cfg, model, acc)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(out / "plan.json", plan)
    report.plot(plan, cfg.png or out / "plan.png")
    config_io.save(cfg, out / "config.yaml")
    artifacts.write_manifest(out, stage="plan", config=config_io.to_dict(cfg))
    print(jsonlib.dumps(plan, indent=2) if cfg.json else report.format_table(plan))
    return out
