"""Show a plan: a terminal table, and a PNG with the memory breakdown and the loss-optimal frontier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from groundup.plan import compute


def fmt_count(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def fmt_bytes(x: float | None) -> str:
    if x is None or x != x:  # None or NaN
        return "n/a"
    if x >= 1e8:
        return f"{x / 1e9:,.2f} GB ({x / 2**30:,.2f} GiB)"
    if x >= 2**20:
        return f"{x / 2**20:,.2f} MiB"
    if x >= 2**10:
        return f"{x / 2**10:,.2f} KiB"
    return f"{x:,.0f} bytes"


def fmt_rate(flops_per_s: float) -> str:
    if flops_per_s >= 1e12:
        return f"{flops_per_s / 1e12:,.1f} TFLOP/s"
    return f"{flops_per_s / 1e9:,.1f} GFLOP/s"


def fmt_seconds(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def fmt_money(x: float | None) -> str:
    return "n/a" if x is None else f"${x:,.0f}" if x >= 100 else f"${x:,.2f}"


Rows = list[tuple[str, str]]


def rows(plan: dict[str, Any]) -> list[tuple[str, Rows]]:
    """The table's sections, as (title, [(label, value)])."""
    mem, inf = plan["memory"]["chosen"], plan["inference"]
    lay = plan["parallelism"]["layout"]
    model_parallel = (lay["tp"], lay["pp"], lay["cp"], lay["ep"]) != (1, 1, 1, 1)
    return [
        ("model", model_rows(plan)),
        ("parameters", parameter_rows(plan)),
        ("compute", compute_rows(plan)),
        ("time and cost", time_cost_rows(plan)),
        (f"training memory per device ({mem['precision']}, {mem['sharding']}, {mem['gpus']} device(s)"
         + (", data parallel only: see parallelism" if model_parallel else "") + ")", memory_rows(plan)),
        ("interconnect", interconnect_rows(plan)),
        (f"parallelism (dp {lay['dp']} x tp {lay['tp']} x pp {lay['pp']} x cp {lay['cp']}"
         + (f", ep {lay['ep']}" if lay["ep"] > 1 else "") + f" = {lay['gpus']} devices)", parallelism_rows(plan)),
        (f"inference ({inf['precision']}, batch {inf['batch']}, context {inf['context']})", inference_rows(plan)),
    ]


def model_rows(plan: dict[str, Any]) -> Rows:
    m = plan["model"]
    return [("name", f"{m['name']} ({m['family']}): {m['n_layer']} layers, width {m['n_embd']}, "
                     f"{m['n_head']} heads ("
                     + (f"latent attention, kv rank {m['kv_lora_rank']}" if m.get("attention") == "mla"
                        else f"{m['n_kv_head'] or m['n_head']} kv") + f"), vocab {m['vocab_size']}, "
                     f"context {m['block_size']}")]


def parameter_rows(plan: dict[str, Any]) -> Rows:
    p = plan["parameters"]
    return [
        ("total", f"{p['total']:,} ({fmt_count(p['total'])})"),
        *([("active per token", f"{p['active']:,} ({fmt_count(p['active'])}): the routed experts a token is sent to, "
                                "not all of them")] if p["active"] != p["total"] else []),
        ("token embeddings", f"{p['token_embeddings']:,}"),
        ("position embeddings", f"{p['position_embeddings']:,}"),
        ("attention", f"{p['attention']:,}"),
        ("mlp", f"{p['mlp']:,}"),
        ("norms", f"{p['norms']:,}"),
        ("lm head", f"{p['lm_head']:,}" + (" (tied)" if plan["model"]["tie_embeddings"] else "")),
        ("biases (included above)", f"{p['biases']:,}"),
        ("non-embedding", f"{p['non_embedding']:,}"),
    ]


def compute_rows(plan: dict[str, Any]) -> Rows:
    c, total, active = plan["compute"], plan["parameters"]["total"], plan["parameters"]["active"]
    by_rule, by_fit = c["optimal_20_tokens_per_param"], c["optimal_chinchilla_fit"]
    return [
        ("training tokens", f"{fmt_count(c['tokens'])} ({c['tokens_per_param']:.1f} per parameter, "
                            f"{c['tokens_source']})"),
        ("6·N·D", f"{c['flops_6nd']:.3e} FLOPs (N = " + (f"all {fmt_count(total)} parameters)" if active == total
                                                         else f"the {fmt_count(active)} active parameters of "
                                                              f"{fmt_count(total)})")),
        ("model FLOPs", f"{c['training_flops']:.3e} = (6·N_matmul + 12·l·s·d_attn)·D, N_matmul "
                        f"{fmt_count(c['matmul_params'])}, s={c['seq_len']}; attention "
                        f"{c['attention_flops']:.2e}"),
        ("per token (train / forward)", f"{c['flops_per_token']:.3e} / {c['forward_flops_per_token']:.3e}"),
        ("Megatron per step", f"{c['megatron_step_flops']:.3e} ({c['megatron_flops_per_token']:.3e} per token, "
                              f"{c['sequences_per_step']} sequences, with recomputation)"),
        ("steps", f"{c['steps']:,.0f} of {c['tokens_per_step']:,} tokens"),
        ("Chinchilla tokens (20/param)", fmt_count(c["chinchilla_tokens"])),
        ("optimal for this compute", f"{fmt_count(by_rule['n_params'])} params on {fmt_count(by_rule['tokens'])} "
                                     f"tokens (20/param); {fmt_count(by_fit['n_params'])} on "
                                     f"{fmt_count(by_fit['tokens'])} (parametric fit)"),
        ("fit loss L(N, D)", f"{c['predicted_loss']:.3f} nats/token (Chinchilla fit, indicative)"),
    ]


def time_cost_rows(plan: dict[str, Any]) -> Rows:
    t, hw = plan["time_cost"], plan["hardware"]
    return [
        ("device", f"{hw['description']}: {fmt_rate(hw['peak_used'])} peak" + (" (measured)" if hw["measured"] else "")),
        ("GPU-hours", f"{t['gpu_hours']:,.2f} at MFU {t['mfu']:.0%}"),
        ("wall clock", f"{fmt_seconds(t['wall_clock_hours'] * 3600)} on {t['gpus']} device(s); "
                       f"{fmt_seconds(t['wall_clock_hours_no_overlap'] * 3600)} if communication is exposed"
                       if t["wall_clock_hours_no_overlap"] is not None else ""),
        ("throughput", f"{t['tokens_per_s']:,.0f} tokens/s"),
        ("cost", f"{fmt_money(t['cost'])} at {fmt_money(t['price_per_gpu_hour'])}/GPU-hour"),
        ("energy", "n/a (no power figure; pass --power_watts)" if t["energy_kwh"] is None else
         f"{t['energy_kwh']:,.1f} kWh at {t['power_watts']:.0f} W, {fmt_money(t['energy_cost'])}"),
    ]


def memory_rows(plan: dict[str, Any]) -> Rows:
    mem = plan["memory"]["chosen"]
    return [
        ("bytes per parameter", f"{mem['bytes_per_param']} before sharding"),
        ("weights", fmt_bytes(mem["weights"])),
        ("gradients", fmt_bytes(mem["gradients"])),
        ("master weights", fmt_bytes(mem["master_weights"])),
        ("optimizer states", fmt_bytes(mem["optimizer_states"])),
        ("activations", fmt_bytes(mem["activations"]) + (" (checkpointed)"
                                                         if plan["memory"]["activation_checkpointing"] else "")),
        ("gathered weights (ZeRO-3)", fmt_bytes(mem["gathered_weights"])),
        ("total", f"{fmt_bytes(mem['total'])} of {fmt_bytes(mem['device_memory'])}: "
                  f"{'fits' if mem['fits'] else 'DOES NOT FIT'}"),
    ]


def interconnect_rows(plan: dict[str, Any]) -> Rows:
    net = plan["interconnect"]
    return [
        ("gradient sync", f"{fmt_bytes(net['bytes_communicated'])} per step over {net['link']}"
                          + (f" and {net['network']}" if net["network"] else "")
                          + f" at {net['bus_bandwidth'] / 1e9:,.1f} GB/s bus bandwidth"),
        ("time", f"{fmt_seconds(net['seconds'])} against {fmt_seconds(net['compute_seconds'])} of compute: "
                 f"{net['share']:.1%} of the step if not overlapped"),
    ]


def schedule_label(name: str, figures: dict[str, Any]) -> str:
    v = figures["virtual_stages"]
    return f"{name}{'' if v == 1 else f' (v={v})'} {figures['bubble']:.1%}"


def parallelism_rows(plan: dict[str, Any]) -> Rows:
    par = plan["parallelism"]
    lay = par["layout"]
    out: Rows = [("mesh", f"('pp', 'dp', 'cp', 'tp') = ({lay['pp']}, {lay['dp']}, {lay['cp']}, {lay['tp']}); "
                          f"gradients reduced over dp x cp = {lay['data_group']}"
                          + (", sequence parallel" if lay["sequence_parallel"] else ""))]
    for r in par["ranks"]:
        label = "memory per device" if r["role"] == "only" else f"memory, pp rank {r['rank']} ({r['role']})"
        out.append((label, f"{fmt_bytes(r['total'])}: states {fmt_bytes(r['model_states'])} "
                           f"({fmt_count(r['parameters'])} params, {r['layers']} blocks), activations "
                           f"{fmt_bytes(r['activations'])} ({r['in_flight']:g} micro-batch(es) in flight)"
                           + (f", gathered {fmt_bytes(r['gathered_weights'])}" if r["gathered_weights"] else "")
                           + ("" if r["fits"] is None else ": fits" if r["fits"] else ": DOES NOT FIT")))
    if lay["pp"] > 1:
        out.append(("pipeline bubble", f"{par['bubble']:.1%} with {lay['schedule']} (p={lay['pp']}, "
                                       f"m={lay['microbatches']}, v={lay['virtual_stages']}): steps take "
                                       f"{par['step_stretch']:.2f}x the compute"))
        out.append(("every schedule", ", ".join(schedule_label(name, s) for name, s in par["schedules"].items())))
    for tr in par["communication"]:
        share = tr["share_of_compute"]
        out.append((f"{tr['dimension']} traffic per step",
                     f"{fmt_bytes(tr['bytes_per_step'])} per device, {tr['collective']} over {tr['group']} ranks "
                     f"[{tr['formula']}]; {fmt_seconds(tr['seconds'])} "
                     f"{'across nodes' if tr['across_nodes'] else 'within a node'} at "
                     f"{tr['bandwidth'] / 1e9:,.0f} GB/s"
                     + ("" if share is None else f", {share:.1%} of compute")))
    cp = par["context_parallel"]
    if cp:
        out.append(("cp overlap", f"chunks of {cp['chunk_tokens']:,.0f} tokens; K/V exchange hides behind attention "
                                  f"from about {cp['overlap_min_tokens']:,.0f} tokens per chunk: "
                                  + ("overlapped" if cp["overlaps"] else "exposed")))
    return out


def inference_rows(plan: dict[str, Any]) -> Rows:
    inf = plan["inference"]
    decode, empty, prefill = inf["decode"], inf["decode_empty_cache"], inf["prefill"]
    return [
        *[(f"weights {name}", f"{fmt_bytes(w['exact'])}; ×1.2 rule {fmt_bytes(w['rule_of_thumb'])}")
          for name, w in inf["weights"].items()],
        ("KV cache per token", fmt_bytes(inf["kv_cache_bytes_per_token"])),
        ("KV cache", fmt_bytes(inf["kv_cache_bytes"])),
        ("decode bound (empty cache)", f"{empty['tokens_per_s']:,.1f} tokens/s ({empty['bound']} bound)"),
        ("decode bound (full context)", f"{decode['tokens_per_s']:,.1f} tokens/s per sequence, "
                                        f"{decode['aggregate_tokens_per_s']:,.1f} in all ({decode['bound']} bound)"),
        ("prefill bound", f"{prefill['tokens_per_s']:,.0f} tokens/s, {fmt_seconds(prefill['seconds'])} for "
                          f"{inf['context']} tokens ({prefill['bound']} bound)"),
        ("max batch at this context", f"{inf['max_batch']:,}"),
    ]


def format_table(plan: dict[str, Any]) -> str:
    sections = rows(plan)
    width = max(len(label) for _, items in sections for label, _ in items)
    lines = []
    for title, items in sections:
        lines.append(f"\n{title}")
        lines.append("-" * len(title))
        lines += [f"  {label.ljust(width)}  {value}" for label, value in items]
    return "\n".join(lines).lstrip("\n")


def plot(plan: dict[str, Any], path: str | Path) -> Path:
    """Two panels: memory per device by layout (stacked bars, device memory as a line), and the
    loss-optimal model size against compute (20 tokens/param and the parametric fit), the plan marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_mem, ax_opt) = plt.subplots(1, 2, figsize=(13, 5))

    layouts = plan["memory"]["layouts"]
    names = list(layouts)
    parts = ["weights", "gradients", "master_weights", "optimizer_states", "gathered_weights", "activations"]
    bottom = np.zeros(len(names))
    for part in parts:
        values = np.array([layouts[n][part] for n in names]) / 1e9
        if values.any():
            ax_mem.bar(names, values, bottom=bottom, label=part.replace("_", " "))
            bottom += values
    device = plan["memory"]["chosen"]["device_memory"]
    if device and device == device:
        ax_mem.axhline(device / 1e9, color="black", linestyle="--", linewidth=1,
                       label=f"{plan['hardware']['name']} memory")
    chosen = plan["memory"]["chosen"]
    ax_mem.set_title(f"training memory per device: {plan['model']['name']}, {chosen['precision']}, "
                     f"{chosen['gpus']} device(s)", fontsize=10)
    ax_mem.set_ylabel("GB")
    ax_mem.tick_params(axis="x", rotation=45)
    ax_mem.legend(fontsize=8)

    c = plan["compute"]
    budget = c["flops_6nd"]
    grid = np.logspace(np.log10(budget) - 4, np.log10(budget) + 4, 60)
    for rule, label in (("tokens_per_param", "20 tokens/param"), ("fit", "Chinchilla parametric fit")):
        ax_opt.loglog(grid, [compute.loss_optimal(float(g), rule=rule).n_params for g in grid], label=label)
    ax_opt.scatter([budget], [plan["parameters"]["total"]], color="red", zorder=3,
                   label=f"this plan ({fmt_count(plan['parameters']['total'])} params, "
                         f"{fmt_count(c['tokens'])} tokens)")
    ax_opt.set_xlabel("training compute C = 6ND (FLOPs)")
    ax_opt.set_ylabel("loss-optimal parameters N")
    ax_opt.set_title("loss-optimal model size for a compute budget", fontsize=10)
    ax_opt.grid(True, which="both", alpha=0.3)
    ax_opt.legend(fontsize=8)

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
