"""The report's figures: matplotlib, drawn off-screen, returned as PNG bytes.

Every figure has a title and labelled axes with units; several runs are overlaid in one colour
each (within one run, train and held-out curves differ by colour instead). A function returns
None when none of the runs has anything to draw, and the page then says so.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from groundup.report.metrics import Metrics, Series

DPI = 100
WIDTH = 11.0  # inches: 1100 px at DPI, the page's content width

X_AXES = {  # key in the series -> (name in titles, divisor, axis label with its unit)
    "step": ("steps", 1.0, "optimizer step"),
    "tokens": ("tokens", 1e6, "tokens seen (millions)"),
    "elapsed_s": ("time", 60.0, "training time (minutes)"),
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "font.size": 9, "axes.titlesize": 10, "axes.titleweight": "bold", "axes.labelsize": 9,
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
        "legend.fontsize": 8, "legend.frameon": False, "figure.titlesize": 12, "figure.titleweight": "bold",
    })
    return plt


def to_png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def color(i: int) -> str:
    return f"C{i % 10}"


def wants_log(values: Sequence[np.ndarray], ratio: float = 20.0) -> bool:
    """A log axis when the positive values span more than ``ratio`` (a loss from 9 down to 2 does not)."""
    pos = [v[v > 0] for v in values if len(v)]
    pos = [v for v in pos if len(v)]
    if not pos:
        return False
    lo, hi = min(float(v.min()) for v in pos), max(float(v.max()) for v in pos)
    return lo > 0 and hi / lo > ratio


@dataclass
class Curve:
    """One metric of one run, as drawn: the run's index picks the colour when several runs are overlaid."""

    run: int
    label: str
    series: Series
    style: str = "-"
    marker: str | None = None


def _draw(ax, curves: list[Curve], axis: str, *, several_runs: bool, palette_offset: int = 0) -> bool:
    _, scale, _ = X_AXES[axis]
    drawn = False
    for n, c in enumerate(curves):
        x = c.series.x(axis)
        ok = np.isfinite(x)
        if not ok.any():
            continue
        col = color(c.run) if several_runs else color(n + palette_offset)
        ax.plot(x[ok] / scale, c.series.value[ok], c.style, color=col, lw=1.2, marker=c.marker, ms=3,
                label=c.label)
        drawn = True
    return drawn


@dataclass
class Panel:
    title: str
    ylabel: str
    keys: Sequence[str]
    """Metric keys drawn in this panel (each run's value of each key is one curve)."""
    names: Sequence[str] | None = None
    """Legend name of each key (default: the key)."""
    log: bool | None = None
    """Log y axis: True, False, or None to decide from the data's range."""
    percent: bool = False
    hlines: Sequence[tuple[str, float, str]] = ()
    """(label, y, style) reference lines, e.g. a compressor's bits per byte."""


def curves_figure(title: str, runs: Sequence[tuple[str, Metrics]], panels: Sequence[Panel], axes: Sequence[str],
                  *, columns: int | None = None) -> bytes | None:
    """A grid of panels: one per (panel, x axis); empty panels are left out; None if nothing to draw."""
    several = len(runs) > 1
    cells = []
    for panel in panels:
        curves = []
        for r, (run_label, metrics) in enumerate(runs):
            for k, key in enumerate(panel.keys):
                series = metrics.get(key) if metrics is not None else None
                if series is None or not len(series):
                    continue
                name = (panel.names or panel.keys)[k]
                if several:
                    label = run_label if len(panel.keys) == 1 else f"{run_label}: {name}"
                else:
                    label = name
                sparse = series.count <= 25  # evaluations: few points, drawn with markers
                curves.append(Curve(run=r, label=label, series=series, style="--" if k else "-",
                                    marker="o" if sparse else None))
        if curves:
            for axis in axes:
                cells.append((panel, axis, curves))
    if not cells:
        return None
    plt = _plt()
    ncols = columns or min(len(cells), 3)
    nrows = math.ceil(len(cells) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(WIDTH, 3.1 * nrows + 0.5), squeeze=False)
    for ax in grid.flat[len(cells):]:
        ax.set_visible(False)
    for ax, (panel, axis, curves) in zip(grid.flat, cells, strict=False):
        _draw(ax, curves, axis, several_runs=several)
        for i, (label, y, style) in enumerate(panel.hlines):
            ax.axhline(y, ls=style, color="0.35" if not several else color(i // 2), lw=1, label=label)
        log = panel.log if panel.log is not None else wants_log([c.series.value for c in curves])
        if log:
            ax.set_yscale("log")
        if panel.percent:
            from matplotlib.ticker import PercentFormatter

            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_title(panel.title if len(axes) == 1 else f"{panel.title} vs {X_AXES[axis][0]}")
        ax.set_xlabel(X_AXES[axis][2])
        ax.set_ylabel(panel.ylabel)
        if len(ax.get_legend_handles_labels()[0]) > 1 or several:
            ax.legend(loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return to_png(fig)


def bits_per_byte_figure(runs: Sequence[tuple[str, Metrics]], baselines: Sequence[dict],
                         finals: Sequence[tuple[float, float, float] | None]) -> bytes | None:
    """Held-out bits per byte against steps and tokens, with gzip -9 and xz -9e as horizontal lines and
    each run's score on the whole held-out text (``finals``: step, tokens, bits per byte) as a star."""
    several = len(runs) > 1
    have = [(r, m.get("val_bits_per_byte")) for r, (_, m) in enumerate(runs) if m is not None]
    have = [(r, s) for r, s in have if s is not None and len(s)]
    if not have and not any(finals):
        return None
    plt = _plt()
    fig, axs = plt.subplots(1, 2, figsize=(WIDTH, 3.8))
    for ax, axis in zip(axs, ("step", "tokens"), strict=True):
        _, scale, xlabel = X_AXES[axis]
        for n, (r, series) in enumerate(have):
            x = series.x(axis)
            label = f"{runs[r][0]}: model, held-out sample" if several else "model, sample of held-out windows"
            ax.plot(x / scale, series.value, "o-", ms=3, lw=1.2, color=color(r if several else n), label=label)
        for r, final in enumerate(finals):
            if final is None:
                continue
            fx = final[0] if axis == "step" else final[1] / scale
            label = (f"{runs[r][0]}: " if several else "model, ") + f"all held-out text {final[2]:.3f}"
            ax.plot([fx], [final[2]], "*", ms=12, color=color(r if several else 3), label=label)
        for name, style in (("gzip_bits_per_byte", "--"), ("xz_bits_per_byte", ":")):
            tool = "gzip -9" if name.startswith("gzip") else "xz -9e"
            values = [base.get(name) for base in baselines]
            if len({v for v in values if v is not None}) == 1:  # the same held-out bytes: one line for all
                value = next(v for v in values if v is not None)
                ax.axhline(value, ls=style, lw=1, color="0.35", label=f"{tool} {value:.3f}")
                continue
            for r, value in enumerate(values):
                if value is not None:
                    ax.axhline(value, ls=style, lw=1, color=color(r), label=f"{runs[r][0]}: {tool} {value:.3f}")
        ax.set(title=f"Held-out bits per byte vs {X_AXES[axis][0]}", xlabel=xlabel, ylabel="bits per byte (lower is better)")
        ax.legend(loc="best")
    fig.suptitle("Held-out compression: model against gzip and xz on the same bytes")
    fig.tight_layout()
    return to_png(fig)


def funnel_figure(runs: Sequence[tuple[str, list[dict]]]) -> bytes | None:
    """Documents and bytes left after each curation step, as a share of what was read (one bar group per step)."""
    runs = [(label, rows) for label, rows in runs if rows]
    if not runs:
        return None
    plt = _plt()
    steps: list[str] = []
    for _, rows in runs:
        for row in rows:
            if row["step"] not in steps:
                steps.append(row["step"])
    fig, axs = plt.subplots(1, 2, figsize=(WIDTH, 0.35 * len(steps) + 1.6))
    height = 0.8 / len(runs)
    for ax, what, unit in zip(axs, ("documents", "bytes"), ("documents", "bytes"), strict=True):
        for r, (label, rows) in enumerate(runs):
            by_step = {row["step"]: row for row in rows}
            first = rows[0][what] or 1
            ys = np.arange(len(steps)) + r * height - 0.4 + height / 2
            shares = [by_step[s][what] / first if s in by_step else 0 for s in steps]
            bars = ax.barh(ys, shares, height=height, color=color(r), label=label)
            for bar, s in zip(bars, steps, strict=True):
                if s in by_step:
                    ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2,
                            f"{by_step[s][what]:,}", va="center", fontsize=7)
        ax.set_yticks(np.arange(len(steps)), steps)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.25)
        from matplotlib.ticker import PercentFormatter

        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set(title=f"{unit.capitalize()} kept after each step", xlabel=f"share of {unit} read (%)")
        if len(runs) > 1:
            ax.legend(loc="lower right")
    fig.suptitle("Curation funnel")
    fig.tight_layout()
    return to_png(fig)


def drops_figure(runs: Sequence[tuple[str, dict[str, int]]], top: int = 20) -> bytes | None:
    """Documents dropped by (step: reason), the largest ``top`` reasons, log scale."""
    runs = [(label, d) for label, d in runs if d]
    if not runs:
        return None
    total: dict[str, int] = {}
    for _, drops in runs:
        for k, v in drops.items():
            total[k] = total.get(k, 0) + v
    reasons = sorted(total, key=total.get, reverse=True)[:top]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH, 0.3 * len(reasons) + 1.4))
    height = 0.8 / len(runs)
    for r, (label, drops) in enumerate(runs):
        ys = np.arange(len(reasons)) + r * height - 0.4 + height / 2
        ax.barh(ys, [drops.get(k, 0) for k in reasons], height=height, color=color(r), label=label)
    return _bars_done(fig, ax, reasons, np.array(list(total.values()), dtype=float), len(runs),
                      title="Documents dropped, by step and reason", xlabel="documents dropped")


def _bars_done(fig, ax, labels: list[str], values: np.ndarray, n_runs: int, *, title: str, xlabel: str) -> bytes:
    """Finish a horizontal bar chart: ``labels`` top down, a log scale where ``values`` span a wide range,
    a legend for several runs; the PNG bytes."""
    ax.set_yticks(np.arange(len(labels)), labels)
    ax.invert_yaxis()
    if wants_log([values], ratio=50):
        ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel)
    if n_runs > 1:
        ax.legend(loc="lower right")
    fig.tight_layout()
    return to_png(fig)


def tokenizer_figure(runs: Sequence[tuple[str, list[int] | None, dict | None]]) -> bytes | None:
    """Vocabulary token lengths (bytes) and held-out compression (bytes per token, tokens per word)."""
    runs = [r for r in runs if r[1] or r[2]]
    if not runs:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(WIDTH, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    several = len(runs) > 1  # vocabularies of different sizes: compare shares, not counts
    for r, (label, lengths, _) in enumerate(runs):
        if lengths:
            weights = np.full(len(lengths), 1 / len(lengths)) if several else None
            ax1.hist(np.clip(lengths, 1, 32), bins=np.arange(0.5, 33.5), weights=weights,
                     histtype="step" if several else "bar", color=color(r), lw=1.5,
                     label=f"{label} ({len(lengths):,} tokens)")
    if several:
        from matplotlib.ticker import PercentFormatter

        ax1.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax1.set(title="Vocabulary: length of each token", xlabel="token length (bytes; last bin: 32 or more)",
            ylabel="share of the vocabulary" if several else "tokens in the vocabulary")
    ax1.legend(loc="best")
    names = [("bytes_per_token", "bytes per token"), ("tokens_per_word", "tokens per word (fertility)")]
    width = 0.8 / len(runs)
    for r, (label, _, stats) in enumerate(runs):
        held = (stats or {}).get("held_out") or {}
        values = [held.get(k) or 0 for k, _ in names]
        xs = np.arange(len(names)) + r * width - 0.4 + width / 2
        bars = ax2.bar(xs, values, width=width, color=color(r), label=label)
        for bar, v in zip(bars, values, strict=True):
            ax2.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{v:.2f}", ha="center", va="bottom",
                     fontsize=8)
    ax2.set_xticks(np.arange(len(names)), [n for _, n in names])
    ax2.set(title="Held-out text: compression and fertility", ylabel="ratio")
    if len(runs) > 1:
        ax2.legend(loc="best")
    fig.tight_layout()
    return to_png(fig)


def eval_figure(runs: Sequence[tuple[str, dict[str, dict]]], max_panels: int = 6) -> bytes | None:
    """Evaluation scores: one panel per metric name, tasks on the y axis, standard errors as error bars."""
    metric_tasks: dict[str, list[str]] = {}
    for _, results in runs:
        for task, scores in results.items():
            for metric, value in scores.items():
                if metric.endswith("_stderr") or metric == "n" or not isinstance(value, (int, float)):
                    continue
                tasks = metric_tasks.setdefault(metric, [])
                if task not in tasks:
                    tasks.append(task)
    if not metric_tasks:
        return None
    metrics = list(metric_tasks)[:max_panels]
    plt = _plt()
    ncols = min(len(metrics), 3)
    nrows = math.ceil(len(metrics) / ncols)
    most = max(len(metric_tasks[m]) for m in metrics)
    fig, grid = plt.subplots(nrows, ncols, figsize=(WIDTH, (0.3 * most * len(runs) + 1.4) * nrows), squeeze=False)
    for ax in grid.flat[len(metrics):]:
        ax.set_visible(False)
    height = 0.8 / len(runs)
    for ax, metric in zip(grid.flat, metrics, strict=False):
        tasks = metric_tasks[metric]
        for r, (label, results) in enumerate(runs):
            values = [results.get(t, {}).get(metric) for t in tasks]
            errs = [results.get(t, {}).get(metric + "_stderr") or 0 for t in tasks]
            ys = np.arange(len(tasks)) + r * height - 0.4 + height / 2
            ax.barh(ys, [v if isinstance(v, (int, float)) else 0 for v in values], height=height,
                    xerr=[e if isinstance(e, (int, float)) else 0 for e in errs], color=color(r), label=label,
                    error_kw={"lw": 1, "capsize": 2})
        ax.set_yticks(np.arange(len(tasks)), tasks)
        ax.invert_yaxis()
        ax.set(title=metric, xlabel=f"{metric} (bars: ± standard error)")
        if len(runs) > 1:
            ax.legend(loc="best")
    fig.suptitle("Evaluation")
    fig.tight_layout()
    return to_png(fig)


def needle_figure(grids: Sequence[tuple[str, str, dict]], max_panels: int = 6) -> bytes | None:
    """Needle in a haystack: per (run, task, grid) a heat map of retrieval accuracy, prompt length across,
    needle depth down (0% at the top: the needle at the start of the filler)."""
    grids = [g for g in grids if isinstance(g[2], dict) and g[2].get("accuracy")][:max_panels]
    if not grids:
        return None
    plt = _plt()
    ncols = min(len(grids), 2)
    nrows = math.ceil(len(grids) / ncols)
    most = max(len(g["depths"]) for _, _, g in grids)
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH, (0.45 * most + 1.6) * nrows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(grids):]:
        ax.set_visible(False)
    image = None
    for i, (ax, (label, task, grid)) in enumerate(zip(axes.flat, grids, strict=False)):
        values = np.array(grid["accuracy"], dtype=float).T  # (depths, lengths)
        image = ax.imshow(values, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        for (row, col), v in np.ndenumerate(values):
            if v == v:  # NaN: a cell with no prompts
                ax.text(col, row, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if 0.25 < v < 0.85 else "white")
        ax.set_xticks(np.arange(len(grid["lengths"])), [f"{n:,}" for n in grid["lengths"]])
        ax.set_yticks(np.arange(len(grid["depths"])), [f"{d:.0%}" for d in grid["depths"]])
        ax.grid(False)
        per_cell = grid.get("samples_per_cell")
        title = (f"{label}: {task}" if label else task) + (f" ({per_cell} prompts per cell)" if per_cell else "")
        ax.set(title=title, xlabel="prompt length (tokens)")
        if i % ncols == 0:
            ax.set_ylabel("needle depth (share of the filler before it)")
    fig.colorbar(image, ax=axes.ravel().tolist(), label="retrieval accuracy", shrink=0.9)
    fig.suptitle("Needle in a haystack: retrieval accuracy by length and depth")
    return to_png(fig)


def timings_figure(runs: Sequence[tuple[str, dict[str, float]]]) -> bytes | None:
    """Wall-clock seconds of every stage, one bar per stage (grouped by run); log scale when they differ a lot."""
    runs = [(label, t) for label, t in runs if t]
    if not runs:
        return None
    stages: list[str] = []
    for _, timings in runs:
        stages += [s for s in timings if s not in stages]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH, 0.32 * len(stages) * max(1, len(runs) * 0.7) + 1.4))
    height = 0.8 / len(runs)
    for r, (label, timings) in enumerate(runs):
        ys = np.arange(len(stages)) + r * height - 0.4 + height / 2
        values = [timings.get(s, 0) for s in stages]
        bars = ax.barh(ys, values, height=height, color=color(r), label=label)
        for bar, v in zip(bars, values, strict=True):
            if v:
                ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:,.1f} s", va="center",
                        fontsize=7)
    every = np.array([v for _, t in runs for v in t.values() if v > 0], dtype=float)
    return _bars_done(fig, ax, stages, np.maximum(every, 1e-3), len(runs),  # under a millisecond counts as one
                      title="Wall-clock time of each stage", xlabel="seconds")


def collectives_figure(runs: Sequence[tuple[str, dict]]) -> bytes | None:
    """A probe's collective sweep: bus bandwidth against size, one panel per collective, one curve per run."""
    names: list[str] = []
    for _, sweep in runs:
        for row in sweep.get("results", []):
            if row["collective"] not in names:
                names.append(row["collective"])
    if not names:
        return None
    plt = _plt()
    fig, grid = plt.subplots(1, len(names), figsize=(WIDTH, 3.3), squeeze=False)
    for ax, name in zip(grid.flat, names, strict=False):
        for r, (label, sweep) in enumerate(runs):
            rows = sorted((row for row in sweep.get("results", []) if row["collective"] == name),
                          key=lambda row: row["bytes"])
            if rows:
                ax.plot([row["bytes"] for row in rows], [row["busbw"] / 1e9 for row in rows], "-o", ms=3,
                        color=color(r), label=f"{label} ({sweep.get('backend')}, {sweep.get('ranks')} ranks)")
        ax.set_xscale("log", base=2)
        ax.set(title=name.replace("_", "-"), xlabel="size (bytes, nccl-tests' convention)", ylabel="bus bandwidth (GB/s)")
        ax.legend(loc="upper left")
    fig.suptitle("Collectives: bus bandwidth by size")
    fig.tight_layout()
    return to_png(fig)


def trace_figure(traces: Sequence[tuple[str, list[dict]]]) -> bytes | None:
    """Each model and tool call of an application run as a bar from its start to its end (one row per
    call, in order; failed calls hatched), one panel per trace."""
    traces = [(label, records) for label, records in traces if records][:4]
    if not traces:
        return None
    plt = _plt()
    rows = max(len(records) for _, records in traces)
    fig, axes = plt.subplots(len(traces), 1, figsize=(WIDTH, min(12, 1.2 + 0.18 * rows) * len(traces)),
                             squeeze=False)
    for ax, (label, records) in zip(axes[:, 0], traces, strict=True):
        t0 = min(r.get("start", 0) for r in records)
        for i, r in enumerate(records):
            ok = r.get("ok", True)
            ax.barh(i, r["latency_s"], left=r.get("start", t0) - t0, height=0.7,
                    color=color(0 if r["kind"] == "model" else 1), hatch=None if ok else "///",
                    edgecolor="black" if not ok else None)
        ax.invert_yaxis()
        ax.set_yticks([])
        ax.set_title(f"{label}: {len(records)} calls (blue: model, orange: tool; hatched: failed)", fontsize=9)
        ax.set_xlabel("seconds since the first call")
    fig.tight_layout()
    return to_png(fig)


def expert_keys(metrics: Metrics | None) -> list[str]:
    """The per-expert load keys of a mixture-of-experts run (``moe_load_<e>``), in expert order."""
    if metrics is None:
        return []
    keys = [k for k in metrics if k.startswith("moe_load_") and k.removeprefix("moe_load_").isdigit()]
    return sorted(keys, key=lambda k: int(k.removeprefix("moe_load_")))


def expert_load_figure(runs: Sequence[tuple[str, Metrics]]) -> bytes | None:
    """A mixture of experts' load over the steps, one row per run: max over mean tokens per expert (layers summed
    and the worst layer; 1 is perfect balance) and each expert's share of the routed tokens as a heat map."""
    rows = [(label, m, expert_keys(m)) for label, m in runs if expert_keys(m)]
    if not rows:
        return None
    plt = _plt()
    fig, grid = plt.subplots(len(rows), 2, figsize=(WIDTH, 3.1 * len(rows) + 0.5), squeeze=False)
    for (label, metrics, keys), (left, right) in zip(rows, grid, strict=True):
        suffix = f" ({label})" if len(rows) > 1 else ""
        for n, (key, name) in enumerate((("moe_load_max_over_mean", "layers summed"),
                                         ("moe_layer_load_max_over_mean", "worst layer"))):
            series = metrics.get(key)
            if series is not None and len(series):
                left.plot(series.x("step"), series.value, "-" if n == 0 else "--", color=color(n), lw=1.2, label=name)
        left.axhline(1.0, ls=":", color="0.35", lw=1, label="balanced")
        left.set(title=f"Expert load balance{suffix}", xlabel=X_AXES["step"][2], ylabel="max / mean tokens per expert")
        left.legend(loc="best")
        series = [metrics.get(k) for k in keys]
        steps = series[0].x("step")
        shares = np.full((len(keys), len(steps)), np.nan)
        for e, s in enumerate(series):  # on the first expert's steps (long logs are thinned per key)
            if s is not None and len(s):
                shares[e] = np.interp(steps, s.x("step"), s.value)
        image = right.imshow(shares, aspect="auto", interpolation="nearest", cmap="viridis", origin="lower",
                             extent=(float(steps[0]) - 0.5, float(steps[-1]) + 0.5, -0.5, len(keys) - 0.5))
        right.grid(False)
        right.set(title=f"Each expert's share of the routed tokens{suffix}", xlabel=X_AXES["step"][2],
                  ylabel="expert")
        bar = fig.colorbar(image, ax=right)
        bar.set_label(f"share (balanced: {1 / len(keys):.3g})")
    fig.suptitle("Mixture of experts: expert load")
    fig.tight_layout()
    return to_png(fig)
