"""The report page: one HTML file, figures inlined as base64 PNG, no script, no network.

Sections follow the run's stages in order; a stage with no output in any of the runs is shown
as "not run" rather than left out, so a reader sees at once what a run did not do.
"""

from __future__ import annotations

import base64
import html
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from groundup import __version__
from groundup.report import plots
from groundup.report.collect import ModelDir, Run

CSS = """
:root { --fg: #1d2430; --muted: #5b6577; --line: #dde2ea; --bg: #f6f7f9; --accent: #2b6cb0; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); }
header { background: #fff; border-bottom: 1px solid var(--line); padding: 18px 28px 10px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .meta { color: var(--muted); font-size: 12px; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid var(--line); padding: 6px 28px;
      z-index: 1; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
nav a.off { color: #9aa3b2; }
main { max-width: 1160px; margin: 0 auto; padding: 10px 28px 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px 20px;
          margin: 16px 0; }
section h2 { margin: 0 0 10px; font-size: 17px; display: flex; align-items: center; gap: 10px; }
section h3 { font-size: 14px; margin: 14px 0 6px; }
.badge { font-size: 11px; font-weight: 600; padding: 2px 8px; border-radius: 10px; background: #e8ecf2;
         color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.badge.warn { background: #fff4d6; color: #8a5a00; }
section.notrun { background: #fafbfc; }
section.notrun p { color: var(--muted); margin: 0; }
figure { margin: 10px 0; }
figure img { width: 100%; max-width: 1100px; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f3f7; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 6px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 150px; background: #fbfcfd; }
.card .v { font-size: 20px; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .k { color: var(--muted); font-size: 12px; }
.card.good .v { color: #1f7a3a; } .card.bad .v { color: #a83232; }
pre { background: #f4f6f9; border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; overflow-x: auto;
      font-size: 12px; max-height: 420px; }
pre.sample { white-space: pre-wrap; word-break: break-word; max-height: 260px; }
.prompt { background: #dbe9fb; }
details summary { cursor: pointer; color: var(--accent); }
.muted { color: var(--muted); }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def human_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def figure(png: bytes | None, alt: str, caption: str = "") -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            cls = ' class="num"' if i >= numeric_from and isinstance(v, (int, float)) and v is not None else ""
            text = fmt(v) if not isinstance(v, str) else esc(v)
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def section(anchor: str, title: str, body: str | None, *, not_run: str | None = None, badge: str = "") -> str:
    if body is None:
        why = esc(not_run or "this stage has no output in the run dir")
        return (f'<section id="{anchor}" class="notrun"><h2>{esc(title)} <span class="badge">not run</span></h2>'
                f"<p>{why}</p></section>")
    badge_html = f' <span class="badge warn">{esc(badge)}</span>' if badge else ""
    return f'<section id="{anchor}"><h2>{esc(title)}{badge_html}</h2>{body}</section>'


def missing_in(runs: Sequence[Run], has: Callable[[Run], Any]) -> str:
    lacking = [r.label for r in runs if not has(r)]
    if not lacking or len(lacking) == len(runs):
        return ""
    return f'<p class="muted">Not run in: {esc(", ".join(lacking))}.</p>'


# ---------------------------------------------------------------------------- facts of a run


def main_model(run: Run) -> ModelDir | None:
    return run.pretrain[0] if run.pretrain else None


def headline(run: Run) -> dict[str, Any]:
    """The run's key figures: from summary.json when `groundup run` wrote one, else from the model dir."""
    s = dict(run.summary or {})
    model = main_model(run)
    if model is not None:
        for key in ("held_out_bits_per_byte", "held_out_loss", "tokens_seen", "steps", "train_seconds", "parameters",
                    "stopped_by"):
            s.setdefault(key, model.result.get(key))
        m = model.metrics
        if m is not None:
            for key, name in (("tokens_per_s", "tokens_per_s_median"), ("mfu", "mfu_median")):
                series = m.get(key)
                if s.get(name) is None and series is not None and len(series):
                    s[name] = float(statistics.median(series.value.tolist()))
            if s.get("steps") is None and m.get("loss") is not None:
                series = m.get("loss")
                s["steps"], s["tokens_seen"] = int(series.step[-1]), int(series.tokens[-1])
    return s


def finals(run: Run) -> tuple[float, float, float] | None:
    h = headline(run)
    if h.get("held_out_bits_per_byte") is None or h.get("tokens_seen") is None:
        return None
    return (h.get("steps") or 0, h["tokens_seen"], h["held_out_bits_per_byte"])


def stage_timings(run: Run) -> dict[str, float]:
    """Seconds per stage: `groundup run`'s own clock where it has one, else what each stage recorded."""
    t: dict[str, float] = {}
    for d, stats in run.curate:
        seconds = (stats.get("seconds") or {}).get("total")
        if seconds is not None:
            t["curate" if len(run.curate) == 1 else f"curate ({run.rel(d)})"] = seconds
    summary_timings = (run.summary or {}).get("timings") or {}
    for key, value in summary_timings.items():
        t[key.removesuffix("_seconds")] = value
    if not summary_timings:
        if run.tokenizer:
            seconds = (run.tokenizer[1].get("train") or {}).get("seconds")
            if seconds is not None:
                t["tokenizer"] = seconds
        if run.tokens_meta and run.tokens_meta[1].get("seconds") is not None:
            t["tokenize"] = run.tokens_meta[1]["seconds"]
        for model in run.pretrain:
            seconds = model.result.get("train_seconds") or _last_elapsed(model)
            if seconds is not None:
                t["pretrain" if len(run.pretrain) == 1 else f"pretrain ({run.rel(model.path)})"] = seconds
    for model in run.finetune:
        seconds = model.result.get("train_seconds") or _last_elapsed(model)
        if seconds is not None:
            t[f"{model.stage} ({run.rel(model.path)})"] = seconds
    for d, results in run.evals:
        seconds = results.get("seconds") or (results.get("model") or {}).get("seconds")
        if isinstance(seconds, (int, float)):
            t[f"evaluate ({run.rel(d)})"] = seconds
    return t


def _last_elapsed(model: ModelDir) -> float | None:
    if model.metrics is None:
        return None
    latest = [float(s.elapsed_s[-1]) for s in model.metrics.series.values() if len(s) and s.elapsed_s[-1] == s.elapsed_s[-1]]
    return max(latest) if latest else None


def hardware(run: Run) -> dict[str, Any]:
    hw = dict((run.summary or {}).get("hardware") or {})
    model = main_model(run)
    manifest = (model.manifest if model else None) or next(iter(run.manifests.values()), {})
    hw.setdefault("platform", manifest.get("platform"))
    hw.setdefault("python", manifest.get("python"))
    hw.setdefault("groundup", manifest.get("groundup_version"))
    if model is not None:
        cfg = model.train_config or {}
        hw.setdefault("device (setting)", cfg.get("device"))
        hw.setdefault("precision (setting)", cfg.get("precision"))
        peak = model.result.get("peak_flops")
        if peak:
            hw.setdefault("peak_tflops_for_mfu", round(peak / 1e12, 3))
    return {HARDWARE_LABELS.get(k, k): v for k, v in hw.items() if v is not None}


HARDWARE_LABELS = {"cpu": "CPU", "cpu_cores": "CPU cores", "torch_threads": "torch threads",
                   "peak_tflops_for_mfu": "peak TFLOP/s (for MFU)", "accelerators": "accelerators (count)"}


def setting(flat: dict[str, Any], key: str) -> Any:
    """A recipe value as a table cell: numbers as numbers, the rest as YAML would write it."""
    if key not in flat:
        return "—"
    value = flat[key]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, (int, float)) else str(value)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def recipe_of(run: Run) -> tuple[str | None, dict | None]:
    if run.recipe_text is not None:
        return run.recipe_text, run.recipe
    model = main_model(run) or (run.finetune[0] if run.finetune else None)
    if model is not None and model.train_config is not None:
        import yaml

        return yaml.safe_dump(model.train_config, sort_keys=False), model.train_config
    return None, None


# ---------------------------------------------------------------------------- sections


def overview_section(runs: Sequence[Run]) -> str:
    parts = []
    for run in runs:
        h = headline(run)
        cards = []
        bpb = h.get("held_out_bits_per_byte")
        gz, xz = h.get("gzip_bits_per_byte"), h.get("xz_bits_per_byte")
        if bpb is not None:
            cls = "" if xz is None else (" good" if bpb < xz else (" bad" if gz is not None and bpb > gz else ""))
            cards.append((f"{bpb:.3f}", "held-out bits per byte (model)", cls))
        if gz is not None:
            cards.append((f"{gz:.3f}", "gzip -9 bits per byte", ""))
        if xz is not None:
            cards.append((f"{xz:.3f}", "xz -9e bits per byte", ""))
        for key, label, f in (("parameters", "parameters", lambda v: f"{v / 1e6:.2f} M"),
                              ("tokens_seen", "tokens seen", lambda v: f"{v / 1e6:.2f} M"),
                              ("steps", "optimizer steps", lambda v: f"{v:,}"),
                              ("train_seconds", "training time", human_seconds),
                              ("tokens_per_s_median", "tokens/s (median)", lambda v: f"{v:,.0f}"),
                              ("mfu_median", "MFU (median)", lambda v: f"{100 * v:.1f} %"),
                              ("stopped_by", "stopped by", str)):
            if h.get(key) is not None:
                cards.append((f(h[key]), label, ""))
        title = f"<h3>{esc(run.label)} <span class='muted'>{esc(run.path)}</span></h3>" if len(runs) > 1 else ""
        if cards:
            body = "".join(f'<div class="card{c}"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
                           for v, k, c in cards)
            parts.append(f'{title}<div class="cards">{body}</div>')
        else:
            parts.append(f"{title}<p class='muted'>No summary: no training output found.</p>")
    return section("overview", "Overview", "".join(parts))


def recipe_section(runs: Sequence[Run]) -> str:
    parts = []
    recipes = [recipe_of(r) for r in runs]
    if len(runs) > 1 and all(data is not None for _, data in recipes):
        flat = [flatten(data) for _, data in recipes]
        keys = sorted({k for f in flat for k in f})
        differ = [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1 and k not in ("out",)]
        if differ:
            rows = [[k, *[setting(f, k) for f in flat]] for k in differ]
            parts.append("<h3>Settings that differ</h3>" + table(["setting", *[r.label for r in runs]], rows))
        else:
            parts.append("<p>The runs' settings are identical.</p>")
    hw_rows: dict[str, list] = {}
    hws = [hardware(r) for r in runs]
    for i, hw in enumerate(hws):
        for k, v in hw.items():
            hw_rows.setdefault(k, ["—"] * len(runs))[i] = v if isinstance(v, (int, float)) else str(v)
    if hw_rows:
        parts.append("<h3>Hardware and software</h3>"
                     + table(["", *[r.label for r in runs]], [[k, *v] for k, v in hw_rows.items()]))
    for run, (text, _) in zip(runs, recipes, strict=True):
        if text is not None:
            name = "recipe.yaml" if run.recipe_text is not None else "train.yaml"
            parts.append(f"<details><summary>{esc(run.label)}: {name}</summary><pre>{esc(text)}</pre></details>")
    if not parts:
        return section("recipe", "Recipe and hardware", None, not_run="no recipe.yaml, train.yaml or manifest found")
    return section("recipe", "Recipe and hardware", "".join(parts))


def data_section(runs: Sequence[Run]) -> str:
    if not any(r.curate for r in runs):
        return section("data", "Data: curation funnel", None,
                       not_run="no curate output (stats.json with a funnel) in the run dir; the run trained on "
                               "text as given")
    parts = [missing_in(runs, lambda r: r.curate)]
    funnels, drops = [], []
    for run in runs:
        for d, stats in run.curate:
            label = run.label if len(run.curate) == 1 else f"{run.label}/{run.rel(d)}"
            funnels.append((label, stats.get("funnel") or []))
            dropped = {}
            for step, s in (stats.get("steps") or {}).items():
                for reason, n in (s.get("dropped") or {}).items():
                    dropped[f"{step}: {reason}"] = n
            if stats.get("dedup"):
                dd = stats["dedup"]
                for key in ("exact_duplicates", "near_duplicates"):
                    if dd.get(key):
                        dropped[f"dedup: {key.replace('_', ' ')}"] = dd[key]
            drops.append((label, dropped))
    parts.append(figure(plots.funnel_figure(funnels), "curation funnel",
                              "Share of the documents and bytes read that remain after each step (labels: counts)."))
    parts.append(figure(plots.drops_figure(drops), "documents dropped by reason", ""))
    for (label, rows), (_, dropped) in zip(funnels, drops, strict=True):
        if not rows:
            continue
        first_docs, first_bytes = rows[0]["documents"] or 1, rows[0]["bytes"] or 1
        table_rows = [[r["step"], r["documents"], f"{100 * r['documents'] / first_docs:.1f} %", human_bytes(r["bytes"]),
                       f"{100 * r['bytes'] / first_bytes:.1f} %", r.get("tokens_estimate")] for r in rows]
        parts.append(f"<h3>{esc(label)}</h3>" + table(["step", "documents", "kept", "bytes", "kept", "tokens (est.)"],
                                                       table_rows))
        if dropped:
            parts.append("<details><summary>dropped by reason</summary>"
                         + table(["step: reason", "documents"], sorted(dropped.items(), key=lambda kv: -kv[1]))
                         + "</details>")
    return section("data", "Data: curation funnel", "".join(parts))


def tokenizer_section(runs: Sequence[Run]) -> str:
    if not any(r.tokenizer or r.tokens_meta for r in runs):
        return section("tokenizer", "Tokenizer", None, not_run="no tokenizer or token shards in the run dir")
    rows_spec = [
        ("vocabulary size", lambda s, m: s.get("vocab_size")),
        ("split pattern", lambda s, m: s.get("pattern")),
        ("encoder", lambda s, m: (s.get("encoder") or {}).get("backend")),
        ("held-out bytes per token", lambda s, m: (s.get("held_out") or {}).get("bytes_per_token")),
        ("held-out tokens per word (fertility)", lambda s, m: (s.get("held_out") or {}).get("tokens_per_word")),
        ("words split into several tokens", lambda s, m: ((s.get("held_out") or {}).get("continued_words") or {})
         .get("continued_share")),
        ("held-out documents round-trip exactly", lambda s, m: (s.get("held_out") or {}).get("round_trip_exact")),
        ("tokens for 4 / 8 spaces", lambda s, m: "{} / {}".format(*[(s.get("whitespace") or {}).get(k, "—") for k in
                                                                     ("tokens_for_4_spaces", "tokens_for_8_spaces")])
         if s.get("whitespace") else None),
        ("digit split", lambda s, m: (s.get("digits") or {}).get("split")),
        ("CJK tokens per character", lambda s, m: (s.get("cjk") or {}).get("tokens_per_character")),
        ("Thai tokens per character", lambda s, m: (s.get("thai") or {}).get("tokens_per_character")),
        ("tokenizer trained on (documents)", lambda s, m: (s.get("train") or {}).get("documents")),
        ("tokenizer trained on (bytes)", lambda s, m: human_bytes((s.get("train") or {}).get("bytes"))
         if (s.get("train") or {}).get("bytes") is not None else None),
        ("training tokens", lambda s, m: (m.get("tokens") or {}).get("train")),
        ("held-out tokens", lambda s, m: (m.get("tokens") or {}).get("val")),
        ("token dtype", lambda s, m: m.get("dtype")),
    ]
    rows = []
    for name, get in rows_spec:
        values = []
        for run in runs:
            s = run.tokenizer[1] if run.tokenizer else {}
            m = run.tokens_meta[1] if run.tokens_meta else {}
            try:
                v = get(s, m)
            except (TypeError, AttributeError, KeyError):
                v = None
            values.append(v)
        if any(v is not None for v in values):
            rows.append([name, *values])
    fig = plots.tokenizer_figure([(r.label, r.vocab_lengths, r.tokenizer[1] if r.tokenizer else None) for r in runs])
    body = (missing_in(runs, lambda r: r.tokenizer)
            + figure(fig, "tokenizer statistics", "Left: how many vocabulary entries have each length in bytes. "
                     "Right: measured on held-out text the tokenizer never saw.")
            + table(["", *[r.label for r in runs]], rows))
    return section("tokenizer", "Tokenizer", body)


KNOWN_TRAIN_KEYS = {"loss", "val_loss", "val_bits_per_byte", "lr", "grad_norm", "tokens_per_s", "mfu"}
FINETUNE_PANELS = [
    plots.Panel(title="Loss", ylabel="cross-entropy (nats/token)", keys=["loss", "val_loss"],
                names=["train", "held-out"]),
    plots.Panel(title="DPO reward margin", ylabel="chosen − rejected reward", keys=["reward_margin",
                                                                                    "val_reward_margin"],
                names=["train", "held-out"], log=False),
    plots.Panel(title="DPO preference accuracy", ylabel="pairs ranked right", keys=["preference_accuracy",
                                                                                     "val_preference_accuracy"],
                names=["train", "held-out"], percent=True, log=False),
    plots.Panel(title="DPO rewards", ylabel="implicit reward", keys=["reward_chosen", "reward_rejected"],
                names=["chosen", "rejected"], log=False),
    plots.Panel(title="Classifier accuracy", ylabel="held-out accuracy", keys=["val_accuracy", "accuracy"],
                names=["held-out", "train"], percent=True, log=False),
    plots.Panel(title="Learning rate", ylabel="learning rate", keys=["lr"], log=False),
    plots.Panel(title="Gradient norm", ylabel="L2 norm (before clipping)", keys=["grad_norm"]),
]


def _other_panels(metrics_list: Sequence[Any], known: set[str]) -> list[plots.Panel]:
    keys: list[str] = []
    for m in metrics_list:
        if m is None:
            continue
        for k in m:
            if k not in known and k not in keys:
                keys.append(k)
    return [plots.Panel(title=k, ylabel=k.split("/")[-1], keys=[k]) for k in keys[:12]]


def pretrain_section(runs: Sequence[Run]) -> str:
    if not any(r.pretrain for r in runs):
        return section("pretrain", "Pretraining", None, not_run="no pretraining model dir (metrics.jsonl) found")
    parts = [missing_in(runs, lambda r: r.pretrain)]
    models = [(r.label, main_model(r).metrics if main_model(r) else None) for r in runs]
    in_progress = [r.label for r in runs if main_model(r) is not None and not main_model(r).finished]
    badge = "in progress" if in_progress else ""
    if in_progress:
        parts.append(f"<p class='muted'>Still training (no manifest yet): {esc(', '.join(in_progress))}. "
                     "Curves show the metrics written so far.</p>")
    loss = plots.curves_figure("Loss", models, [plots.Panel(title="Loss", ylabel="cross-entropy (nats/token)",
                                                            keys=["loss", "val_loss"],
                                                            names=["train", "held-out sample"])],
                               axes=["step", "tokens", "elapsed_s"])
    parts.append(figure(loss, "loss curves", "Train loss is the mean over the steps since the previous line; "
                        "held-out loss is scored on a fixed sample of held-out windows at each evaluation."))
    baselines = [{k: (r.summary or {}).get(k) for k in ("gzip_bits_per_byte", "xz_bits_per_byte")} for r in runs]
    bpb = plots.bits_per_byte_figure(models, baselines, [finals(r) for r in runs])
    parts.append(figure(bpb, "held-out bits per byte", "Bits per byte of held-out text: comparable across "
                        "tokenizers. The star scores all of the held-out text with overlapping windows."))
    clip = None
    for r in runs:
        m = main_model(r)
        if m is not None and m.train_config:
            clip = (m.train_config.get("optim") or {}).get("grad_clip") or clip
    optim = plots.curves_figure("Optimization and throughput", models, [
        plots.Panel(title="Learning rate", ylabel="learning rate", keys=["lr"], log=False),
        plots.Panel(title="Gradient norm", ylabel="L2 norm (before clipping)", keys=["grad_norm"],
                    names=["gradient norm"], hlines=[("clip threshold", clip, "--")] if clip and len(runs) == 1 else ()),
        plots.Panel(title="Throughput", ylabel="tokens/s", keys=["tokens_per_s"], log=False),
        plots.Panel(title="Model FLOPs utilization", ylabel="MFU (% of peak)", keys=["mfu"], percent=True, log=False),
    ], axes=["step"], columns=2)
    parts.append(figure(optim, "optimization curves", "MFU: model FLOPs per token × tokens/s over the device's "
                        "peak (a measured matmul peak on CPU)."))
    metrics = [m for _, m in models]
    eval_keys = sorted({k for m in metrics if m is not None for k in m if k.startswith("eval/")})
    if eval_keys:
        panels = [plots.Panel(title=k.removeprefix("eval/"), ylabel=k.split("/")[-1], keys=[k], log=False)
                  for k in eval_keys[:12]]
        parts.append(figure(plots.curves_figure("Evaluation during training", models, panels, axes=["tokens"]),
                            "evaluation during training", ""))
    load = plots.expert_load_figure(models)
    if load is not None:
        parts.append(figure(load, "expert load", "Tokens routed to each expert in each step's global batch. "
                            "Left: the busiest expert's count over the mean (1: perfect balance), of the counts "
                            "summed over the layers and of the worst layer alone. Right: each expert's share "
                            "(layers summed)."))
    moe_keys = {k for m in metrics for k in plots.expert_keys(m)} | {"moe_load_max_over_mean",
                                                                      "moe_layer_load_max_over_mean"}
    others = _other_panels(metrics, KNOWN_TRAIN_KEYS | set(eval_keys) | moe_keys)
    if others:
        parts.append(figure(plots.curves_figure("Other metrics", models, others, axes=["step"]), "other metrics", ""))
    parts.append(_metrics_notes(runs, lambda r: r.pretrain))
    return section("pretrain", "Pretraining", "".join(parts), badge=badge)


def _metrics_notes(runs: Sequence[Run], models_of: Callable[[Run], list[ModelDir]]) -> str:
    rows = []
    for run in runs:
        for model in models_of(run):
            m = model.metrics
            if m is None:
                continue
            events = ", ".join(f"{k}: {v}" for k, v in m.events.items()) or "none"
            rows.append([f"{run.label}: {run.rel(model.metrics_path)}", m.lines, m.bad_lines, m.non_finite, events])
    if not rows:
        return ""
    return ("<details><summary>metrics files</summary>"
            + table(["file", "records", "bad lines skipped", "non-finite values", "events"], rows) + "</details>")


def finetune_section(runs: Sequence[Run]) -> str:
    if not any(r.finetune for r in runs):
        return section("finetune", "Fine-tuning and preference optimization", None,
                       not_run="no fine-tuning output (a model dir from sft, lora, dpo or classify) found")
    parts = [missing_in(runs, lambda r: r.finetune)]
    stages: dict[str, list[tuple[str, Any]]] = {}
    for run in runs:
        for model in run.finetune:
            stages.setdefault(f"{model.stage}", []).append(
                (run.label if len(runs) > 1 else run.rel(model.path), model.metrics))
    for stage, models in stages.items():
        metrics = [m for _, m in models]
        known = {k for p in FINETUNE_PANELS for k in p.keys}
        panels = FINETUNE_PANELS + _other_panels(metrics, known | {"tokens_per_s", "mfu"})
        fig = plots.curves_figure(f"Fine-tuning: {stage}", models, panels, axes=["step"])
        parts.append(f"<h3>{esc(stage)}</h3>" + (figure(fig, f"{stage} curves", "")
                                                  or "<p class='muted'>No metrics logged yet.</p>"))
    parts.append(_metrics_notes(runs, lambda r: r.finetune))
    return section("finetune", "Fine-tuning and preference optimization", "".join(parts))


def eval_section(runs: Sequence[Run]) -> str:
    if not any(r.evals for r in runs):
        return section("evaluation", "Evaluation", None, not_run="no results.json in the run dir")
    parts = [missing_in(runs, lambda r: r.evals)]
    per_run = []
    for run in runs:
        merged: dict[str, dict] = {}
        for d, results in run.evals:
            for task, scores in results["results"].items():
                if isinstance(scores, dict):
                    name = task if len(run.evals) == 1 else f"{task} ({run.rel(d)})"
                    merged[name] = scores
        per_run.append((run.label, merged))
    parts.append(figure(plots.eval_figure(per_run), "evaluation scores", "Bars: the score; whiskers: its "
                        "standard error over the items."))
    grids = [(run.label if len(runs) > 1 else "", task, scores["grid"]) for run, (_, merged) in zip(runs, per_run, strict=True)
             for task, scores in merged.items() if isinstance(scores.get("grid"), dict)]
    parts.append(figure(plots.needle_figure(grids), "needle in a haystack heat map", "Needle in a haystack: "
                        "the share of prompts whose answer held the hidden number, by prompt length (tokens) and "
                        "where in the filler the needle was put."))
    rows = []
    tasks: list[str] = []
    for _, merged in per_run:
        tasks += [t for t in merged if t not in tasks]
    for task in tasks:
        metrics: list[str] = []
        for _, merged in per_run:
            for k, v in merged.get(task, {}).items():
                if not k.endswith("_stderr") and k != "n" and isinstance(v, (int, float)) and k not in metrics:
                    metrics.append(k)
        for metric in metrics:
            cells = []
            for _, merged in per_run:
                scores = merged.get(task, {})
                value, err, n = scores.get(metric), scores.get(metric + "_stderr"), scores.get("n")
                if value is None:
                    cells.append("—")
                else:
                    cells.append(fmt(value) + (f" ± {fmt(err, 2)}" if isinstance(err, (int, float)) else "")
                                 + (f" (n={n:,})" if isinstance(n, int) else ""))
            rows.append([task, metric, *cells])
    parts.append(table(["task", "metric", *[label for label, _ in per_run]], rows, numeric_from=99))
    return section("evaluation", "Evaluation", "".join(parts))


def trace_section(runs: Sequence[Run]) -> str:
    """Application runs (groundup.apps' trace.jsonl): every model and tool call, latency and tokens."""
    if not any(r.traces for r in runs):  # most runs have no application: no section, no entry in the nav
        return ""
    parts = [missing_in(runs, lambda r: r.traces)]
    labelled = [(f"{run.label}: {run.rel(path)}", records) for run in runs for path, records in run.traces]
    parts.append(figure(plots.trace_figure(labelled), "model and tool calls over time",
                        "Each call from its start to its end."))
    rows = []
    for label, records in labelled:
        by_name: dict[tuple[str, str], list[dict]] = {}
        for r in records:
            by_name.setdefault((r["kind"], str(r.get("name"))), []).append(r)
        for (kind, name), calls in by_name.items():
            latencies = sorted(c["latency_s"] for c in calls)
            tokens = [sum(c.get(k) or 0 for k in ("prompt_tokens", "completion_tokens")) for c in calls]
            errors = [c.get("error") for c in calls if not c.get("ok", True)]
            rows.append([label, kind, name, len(calls), len(errors), fmt(latencies[len(latencies) // 2], 3),
                         fmt(latencies[-1], 3), f"{sum(tokens):,}" if kind == "model" else "—",
                         errors[0] if errors else ""])
    parts.append(table(["trace", "kind", "name", "calls", "failed", "median s", "max s", "tokens", "first error"],
                       rows, numeric_from=3))
    return section("apps", "Agents and workflows", "".join(parts))


def samples_section(runs: Sequence[Run], limit: int) -> str:
    if not any(r.samples for r in runs):
        return section("samples", "Generated samples", None, not_run="no samples.jsonl in the run dir")
    parts = [missing_in(runs, lambda r: r.samples)]
    for run in runs:
        for d, samples in run.samples:
            parts.append(f"<h3>{esc(run.label)}: {esc(run.rel(d / 'samples.jsonl'))}</h3>")
            for s in samples[:limit]:
                prompt, completion = str(s.get("prompt", "")), str(s.get("completion", ""))
                if len(completion) > 2000:
                    completion = completion[:2000] + " …"
                parts.append(f'<pre class="sample"><span class="prompt">{esc(prompt)}</span>{esc(completion)}</pre>')
    parts.append("<p class='muted'>Highlighted: the prompt; the rest was generated.</p>")
    return section("samples", "Generated samples", "".join(parts))


def checkpoints_section(runs: Sequence[Run]) -> str:
    rows = []
    for run in runs:
        for model in run.pretrain + run.finetune:
            prefix = f"{run.label}: " if len(runs) > 1 else ""
            if model.weights_bytes is not None:
                rows.append([prefix + run.rel(model.path / "model.safetensors"), "final weights",
                             model.result.get("steps"), model.result.get("tokens_seen"),
                             human_bytes(model.weights_bytes)])
            for ckpt in model.checkpoints:
                rows.append([prefix + run.rel(ckpt.path), "checkpoint (weights, optimizer, RNG, sampler)", ckpt.step,
                             ckpt.tokens, human_bytes(ckpt.bytes)])
    if not rows:
        return section("checkpoints", "Checkpoints", None, not_run="no model weights or checkpoints found")
    return section("checkpoints", "Checkpoints",
                   table(["path", "what", "step", "tokens", "size"], rows, numeric_from=2))


def probe_of(run: Run) -> dict[str, Any] | None:
    """The run's probe in headline figures: a probe.json in the run dir, else the one its pretraining recorded."""
    from groundup.probe.cache import summary

    if run.probes:
        path, probe = run.probes[0]
        return {**summary(probe), "path": run.rel(path), "quick": probe.get("quick")}
    model = main_model(run)
    recorded = model.result.get("hardware_probe") if model is not None else None
    return recorded if isinstance(recorded, dict) else None


def probe_rows(probes: Sequence[dict | None]) -> list[list[Any]]:
    """One row per figure, one column per run."""
    dtypes = [d for d in ("fp32", "tf32", "bf16", "fp16", "fp8")
              if any(d in (p or {}).get("matmul_flops", {}) for p in probes)]
    rows: list[list[Any]] = [["device", *[(p or {}).get("device") or "—" for p in probes]],
                             ["probed", *[str((p or {}).get("created") or "—") for p in probes]]]
    for dtype in dtypes:
        rows.append([f"matmul {dtype} (TFLOP/s)",
                     *[_scaled((p or {}).get("matmul_flops", {}).get(dtype), 1e12) for p in probes]])
    for key, label in (("memory_bandwidth", "memory, STREAM triad (GB/s)"),
                       ("shard_read_bytes_per_s", "disk read, cold (GB/s)"),
                       ("all_reduce_busbw", "all-reduce bus bandwidth, largest size (GB/s)")):
        rows.append([label, *[_scaled((p or {}).get(key), 1e9) for p in probes]])
    rows.append(["from", *[str((p or {}).get("path") or "—") for p in probes]])
    return rows


def _scaled(value: float | None, scale: float) -> float | str:
    return round(value / scale, 3) if value else "—"


def telemetry_panels(metrics: Sequence[Any]) -> list[plots.Panel]:
    """Panels of the GPUs' and the host's telemetry (telemetry.jsonl), for the GPUs the runs sampled."""
    keys = {k for m in metrics if m is not None for k in m}
    gpus = sorted({k.split("/")[0] for k in keys if k.startswith("gpu")}, key=lambda g: int(g[3:]))

    def per_gpu(field: str) -> dict[str, Any]:
        return {"keys": [f"{g}/{field}" for g in gpus], "names": [g.upper() for g in gpus], "log": False}

    from groundup.probe.telemetry import THROTTLE_TEMPERATURE_C

    panels = [plots.Panel(title="GPU temperature", ylabel="°C", **per_gpu("temperature_c"),
                          hlines=[(f"throttling from about {THROTTLE_TEMPERATURE_C:.0f} °C", THROTTLE_TEMPERATURE_C,
                                   "--")]),
              plots.Panel(title="GPU power", ylabel="W", **per_gpu("power_w")),
              plots.Panel(title="GPU SM clock", ylabel="MHz", **per_gpu("sm_clock_mhz")),
              plots.Panel(title="GPU memory used", ylabel="MiB", **per_gpu("memory_used_mib")),
              plots.Panel(title="GPU slowed down (power or thermal)", ylabel="1: slowing", **per_gpu("slowdown"))]
    return [p for p in panels if p.keys] + [
        plots.Panel(title="Host memory (training process)", ylabel="resident MiB", keys=["host/rss_mib"], log=False),
        plots.Panel(title="CPU", ylabel="% of a core / load", keys=["host/cpu_percent", "host/load_1m"],
                    names=["training process, % of a core", "load average (1 min)"], log=False)]


def hardware_section(runs: Sequence[Run]) -> str:
    parts = []
    probes = [probe_of(r) for r in runs]
    if any(probes):
        parts.append("<h3>Probe</h3>" + table(["", *[r.label for r in runs]], probe_rows(probes)))
    sweeps = [(r.label, r.probes[0][1]["collectives"]) for r in runs if r.probes and r.probes[0][1].get("collectives")]
    parts.append(figure(plots.collectives_figure(sweeps), "collective sweep", "Bus bandwidth = algbw x 2(n-1)/n for "
                        "all-reduce, x (n-1)/n for all-gather, reduce-scatter and all-to-all (nccl-tests' "
                        "conventions); the size is the whole buffer."))
    telemetry = [(r.label, main_model(r).telemetry if main_model(r) else None) for r in runs]
    if any(m is not None for _, m in telemetry):
        png = plots.curves_figure("Hardware during training", telemetry,
                                  telemetry_panels([m for _, m in telemetry]), axes=["elapsed_s"], columns=2)
        parts.append(figure(png, "hardware telemetry", "Sampled every --log.telemetry_every steps: GPUs through "
                            "NVML (where the driver and nvidia-ml-py are present), the host always."))
    if not any(parts):
        return section("hardware", "Hardware", None, not_run="no probe.json (groundup probe --out RUN/probe.json) "
                       "nor telemetry.jsonl (--log.telemetry_every N) found")
    return section("hardware", "Hardware", "".join(parts))


def timings_section(runs: Sequence[Run]) -> str:
    timings = [(r.label, stage_timings(r)) for r in runs]
    if not any(t for _, t in timings):
        return section("timings", "Timings", None, not_run="no stage recorded its time")
    stages: list[str] = []
    for _, t in timings:
        stages += [s for s in t if s not in stages]
    rows = [[s, *[human_seconds(t.get(s)) for _, t in timings]] for s in stages]
    rows.append(["total", *[human_seconds(sum(t.values())) for _, t in timings]])
    body = (figure(plots.timings_figure(timings), "stage timings", "")
            + table(["stage", *[label for label, _ in timings]], rows))
    return section("timings", "Timings", body)


def problems_section(runs: Sequence[Run]) -> str:
    items = [f"<li>{esc(run.label)}: {esc(p)}</li>" for run in runs for p in run.problems[:20]]
    if not items:
        return ""
    return section("problems", "Input problems", "<p>Skipped while reading (the rest of the report is "
                   f"unaffected):</p><ul>{''.join(items)}</ul>", badge=f"{len(items)}")


SECTIONS = [("overview", "Overview"), ("recipe", "Recipe"), ("data", "Data"), ("tokenizer", "Tokenizer"),
            ("pretrain", "Pretraining"), ("finetune", "Fine-tuning"), ("evaluation", "Evaluation"),
            ("samples", "Samples"), ("apps", "Agents"), ("checkpoints", "Checkpoints"), ("hardware", "Hardware"),
            ("timings", "Timings")]
OPTIONAL = {"apps"}
"""Sections left out (with their entry in the nav) where no run has what they draw."""


def render(runs: Sequence[Run], *, title: str | None = None, samples: int = 8) -> str:
    sections = [overview_section(runs), recipe_section(runs), data_section(runs), tokenizer_section(runs),
                pretrain_section(runs), finetune_section(runs), eval_section(runs), samples_section(runs, samples),
                trace_section(runs), checkpoints_section(runs), hardware_section(runs), timings_section(runs),
                problems_section(runs)]
    not_run = {anchor for anchor, _ in SECTIONS if f'id="{anchor}" class="notrun"' in "".join(sections)}
    shown = [(a, n) for a, n in SECTIONS if a not in OPTIONAL or f'id="{a}"' in "".join(sections)]
    nav = "".join(f'<a href="#{a}"{" class=off" if a in not_run else ""}>{esc(n)}</a>' for a, n in shown)
    title = title or ("groundup run: " + runs[0].label if len(runs) == 1
                      else "groundup runs: " + ", ".join(r.label for r in runs))
    paths = " · ".join(esc(r.path.resolve()) for r in runs)
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{GENERATOR} {esc(__version__)}">
<link rel="icon" href="data:,">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>{esc(title)}</h1><div class="meta">{paths} · generated {esc(generated)} by groundup {esc(__version__)}</div></header>
<nav>{nav}</nav>
<main>
{"".join(sections)}
</main>
</body>
</html>
"""


GENERATOR = '<meta name="generator" content="groundup'


def is_report(path: Path) -> bool:
    """Whether the file ``path`` is a page :func:`render` wrote (its head names groundup as the generator)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2048)
    except OSError:
        return False
    return GENERATOR.encode() in head


def write(path: Path, text: str) -> Path:
    """Write atomically, so a browser refreshing the page during training never sees half a file."""
    import os
    import uuid

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
