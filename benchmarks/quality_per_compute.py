"""Quality per compute: held-out bits per byte of three pretraining setups on the same tokens and clock.

    python benchmarks/quality_per_compute.py [--run-dir runs/tiny] [--minutes 5] [--only a,b,c,m] [--out F.json]

On the token shards and tokenizer of a finished tiny run (``make demo`` or ``groundup run tiny`` makes
``runs/tiny``), each setup trains for the same wall-clock budget, one after the other, and is scored on
every held-out document by the one scorer (``groundup evaluate``'s, the main job's figure):

- **(a)** groundup's tiny recipe as it ships (``src/groundup/recipes/tiny.yaml``, its pretrain section);
- **(b)** the tiny recipe before the learning-efficiency work: AdamW, no new block switches, random windows
  (the section below, ``BASELINE``);
- **(c)** litgpt's ``GPT`` on the same shape with litgpt's pretraining defaults: GPT-NeoX initialisation
  (``litgpt.pretrain.initialize_weights``), ``torch.optim.AdamW`` with its defaults (litgpt passes the name
  only), litgpt's ``get_lr`` (linear warmup over min(max_iters, 2000) steps, cosine to ``min_lr`` 4e-5),
  gradient clipping at 1.0, an untied head. ``max_iters`` is the step count (b) reached in the same
  budget, since litgpt sizes its schedule by tokens and the budget here is time. The batch is (b)'s
  (litgpt's 512-sequence global batch would leave a handful of steps). litgpt is optional.
- **(m)** a tiny mixture of experts: (a) with each MLP replaced by 8 experts of half (a)'s hidden width, 2 per
  token (``MOE``), so a token's active parameters equal (a)'s and the MLP parameters are 4x; the Switch
  balancing loss at 0.01. Not run by default (``--only a,m`` compares it with the dense recipe at equal clock).

Periodic evaluations on the first ``--eval-windows`` held-out windows give each a curve over tokens; the
table adds the tokens (a) needs to reach (b)'s final curve figure, and the ratio to (b)'s tokens. The
goal: (a) beats the better of (b) and (c) by >= 0.05 bits per byte and reaches (b)'s figure with >= 1.5x
fewer tokens. The setups run in turn, so a neighbour's load on a shared machine moves their budgets
apart: quote medians of repeated runs.

The curve's crossing understates a recipe whose schedule decays at the end (WSD holds its peak rate until
the last 40% of the budget, so at two thirds of a run it has not annealed yet). So a fourth run, **(a) on
(b)'s tokens / 1.5** (``a15``), trains the recipe for a fixed number of steps, with its whole schedule
fitted to that budget, and the table says whether its final figure reaches (b)'s: the goal's "1.5x fewer
tokens" measured as a run of that size would be. It is counted in tokens, not minutes, so the machine's
speed does not enter.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import yaml

BASELINE = {
    "model": {"name": "tiny", "vocab_size": 8192, "block_size": 256, "n_layer": 4, "n_head": 4, "n_kv_head": 4,
              "n_embd": 256, "intermediate_size": 768, "norm": "rmsnorm", "mlp": "swiglu", "position": "rope",
              "bias": False, "tie_embeddings": True},
    "batch_size": 8,
    "seq_len": 256,
    "optim": {"lr": 2.0e-3, "min_lr_ratio": 0.05, "weight_decay": 0.1, "betas": [0.9, 0.95], "warmup_steps": 100,
              "schedule": "cosine", "grad_clip": 1.0},
    "train": {"schedule_clock": "time", "log_every": 20},
}
"""The tiny recipe's pretrain section before Muon, the block switches and packed documents."""

EVAL_EVERY = 100
"""Steps between the periodic evaluations that draw each setup's curve."""


MOE = {"name": "tiny-moe", "moe_experts": 8, "moe_top_k": 2, "moe_hidden": 384, "moe_aux_loss_coef": 0.01}
"""(m): the tiny recipe's model with a mixture of experts in every layer (8 experts of 384 = half of 768, top 2)."""


def moe_section() -> dict:
    section = recipe_pretrain_section()
    section["model"] = {**section["model"], **MOE}
    return section


def recipe_pretrain_section() -> dict:
    recipe = yaml.safe_load((resources.files("groundup") / "recipes" / "tiny.yaml").read_text(encoding="utf-8"))
    return recipe["pretrain"]


def groundup_setup(name: str, section: dict, run_dir: Path, work: Path, minutes: float | None,
                   eval_windows: int, steps: int | None = None, compile: bool | None = None) -> dict:
    """Train ``section`` (a pretrain config) with ``groundup pretrain`` for ``minutes`` (its schedule on the
    clock), or for ``steps`` (its schedule over them); its figures and curve. ``compile``: override the
    section's torch.compile switch (None keeps it)."""
    config = json.loads(json.dumps(section))  # a deep copy
    if compile is not None:
        config["compile"] = compile
    config.update(tokens=str(run_dir / "tokens"), tokenizer=str(run_dir / "tokenizer"), out=str(work / name),
                  eval_windows=eval_windows, overwrite=True)
    train = config.setdefault("train", {})
    if steps is None:
        train.update(max_steps=1_000_000, max_minutes=minutes, schedule_clock="time")
    else:
        train.update(max_steps=steps, max_minutes=None, schedule_clock="steps")
    train.update(eval_every=EVAL_EVERY, checkpoint_every=0, progress_bar=False)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "groundup", "pretrain", "--config", str(path)], check=True)
    result = json.loads((work / name / "manifest.json").read_text(encoding="utf-8"))["result"]
    curve = [(r["tokens"], r["val_bits_per_byte"]) for r in map(json.loads, (work / name / "metrics.jsonl")
             .read_text(encoding="utf-8").splitlines()) if "val_bits_per_byte" in r]
    return {"bits_per_byte": result["held_out_bits_per_byte"], "tokens": result["tokens_seen"],
            "steps": result["steps"], "seconds": result["train_seconds"], "curve": curve}


def litgpt_setup(run_dir: Path, minutes: float, max_iters: int, eval_windows: int) -> dict:
    """litgpt's GPT with litgpt's pretraining defaults (see the module docstring), in this process."""
    import torch
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.pretrain import get_lr, initialize_weights

    from groundup.evaluate.lm import score_shard
    from groundup.tokens.datasets import RandomWindows, load_tokens

    shape, meta = BASELINE["model"], json.loads((run_dir / "tokens" / "meta.json").read_text(encoding="utf-8"))
    config = Config(name="tiny", block_size=shape["block_size"], vocab_size=shape["vocab_size"],
                    padded_vocab_size=shape["vocab_size"], n_layer=shape["n_layer"], n_head=shape["n_head"],
                    n_query_groups=shape["n_kv_head"], n_embd=shape["n_embd"],
                    intermediate_size=shape["intermediate_size"], bias=False, norm_class_name="RMSNorm",
                    norm_eps=1e-5, mlp_class_name="LLaMAMLP", rotary_percentage=1.0, parallel_residual=False)
    torch.manual_seed(42)  # litgpt pretrain's default seed
    model = GPT(config)
    initialize_weights(SimpleNamespace(strategy=None), model, n_layer=config.n_layer, n_embd=config.n_embd)
    model.max_seq_length = config.block_size
    optimizer = torch.optim.AdamW(model.parameters())  # litgpt passes the class name alone: torch's defaults
    peak_lr, warmup = optimizer.defaults["lr"], min(max_iters, 2000)
    train, val = load_tokens(run_dir / "tokens", "train"), load_tokens(run_dir / "tokens", "val")
    sampler = RandomWindows(train, BASELINE["seq_len"], BASELINE["batch_size"], seed=1337)
    eos, val_bytes = int(meta["eos_id"]), int(meta["bytes"]["val"])

    def held_out(max_windows: int | None) -> float:
        model.eval()
        with torch.no_grad():
            score = score_shard(model, val, eos, n_bytes=val_bytes, batch_size=BASELINE["batch_size"],
                                max_windows=max_windows)
        model.train()
        if max_windows is None:
            return score.metrics()["bits_per_byte"]
        # the periodic figure as pretraining logs it: the sample's loss times the shard's tokens per byte
        return -score.loglikelihood / max(score.tokens, 1) / math.log(2) * len(val) / val_bytes

    step, tokens, spent, curve = 0, 0, 0.0, []
    while spent < minutes * 60:
        start = time.perf_counter()
        # past max_iters litgpt's rule is min_lr (get_lr itself divides by zero at it == max_iters == warmup)
        lr = get_lr(peak_lr, step, warmup, max_iters, 4e-5) if step < max_iters else 4e-5
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = sampler.next_batch()
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step, tokens = step + 1, tokens + x.numel()
        spent += time.perf_counter() - start
        if step % EVAL_EVERY == 0:
            curve.append((tokens, held_out(eval_windows)))
    return {"bits_per_byte": held_out(None), "tokens": tokens, "steps": step, "seconds": spent, "curve": curve}


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """Tokens at which a curve first reaches ``target`` bits per byte (linear between evaluations)."""
    previous = None
    for tokens, bpb in curve:
        if bpb <= target:
            if previous is None:
                return float(tokens)
            (t0, b0) = previous
            return t0 + (tokens - t0) * (b0 - target) / (b0 - bpb)
        previous = (tokens, bpb)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/tiny"),
                        help="a tiny run dir with tokens/ and tokenizer/ (make demo)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget of each setup")
    parser.add_argument("--eval-windows", type=int, default=64, help="held-out windows of the periodic evaluations")
    parser.add_argument("--only", default="a,b,a15,c",
                        help="which setups to run, comma-separated (a, b, c, m; a15: the recipe on (b)'s tokens / 1.5)")
    parser.add_argument("--work", type=Path, default=None, help="where the runs go (default: a temporary dir)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--no-compile", action="store_true",
                        help="train every groundup setup without torch.compile (its start-up, 1-3 minutes on a "
                             "busy 2-core machine, counts in the budget)")
    args = parser.parse_args()
    for needed in ("tokens/train.bin", "tokens/val.bin", "tokens/meta.json", "tokenizer/tokenizer.json"):
        if not (args.run_dir / needed).is_file():
            sys.exit(f"{args.run_dir / needed}: missing; run `make demo` (or `groundup run tiny`) first")
    only = set(args.only.split(","))
    work = args.work or Path(tempfile.mkdtemp(prefix="quality_per_compute_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    compile = False if args.no_compile else None
    if "a" in only:
        results["a"] = groundup_setup("a_recipe", recipe_pretrain_section(), args.run_dir, work, args.minutes,
                                      args.eval_windows, compile=compile)
    if "b" in only or "c" in only:
        results["b"] = groundup_setup("b_baseline", BASELINE, args.run_dir, work, args.minutes, args.eval_windows,
                                      compile=compile)
    if "a15" in only and "b" in results:
        # The recipe given (b)'s tokens / 1.5, its schedule (warmup, hold, decay) fitted to that budget: does it
        # end at or below (b)'s figure? The fair test of "1.5x fewer tokens" for a schedule that decays at the
        # end, whose curve at 2/3 of a longer run has not decayed yet.
        section = recipe_pretrain_section()
        per_step = section["batch_size"] * section["seq_len"] * section.get("train", {}).get("grad_accum", 1)
        steps = max(1, round(results["b"]["tokens"] / 1.5 / per_step))
        results["a15"] = groundup_setup("a_recipe_two_thirds", section, args.run_dir, work, None, args.eval_windows,
                                        steps=steps, compile=compile)
    if "c" in only:
        try:
            results["c"] = litgpt_setup(args.run_dir, args.minutes, results["b"]["steps"], args.eval_windows)
        except ImportError as e:
            print(f"(c) skipped: litgpt is not installed ({e})")
    if "m" in only:
        results["m"] = groundup_setup("m_moe", moe_section(), args.run_dir, work, args.minutes, args.eval_windows,
                                      compile=compile)
    print_table(results, args.minutes)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")


def print_table(results: dict[str, dict], minutes: float) -> None:
    names = {"a": "(a) groundup tiny recipe", "b": "(b) previous recipe (AdamW)", "c": "(c) litgpt defaults",
             "a15": "(a) on (b)'s tokens / 1.5", "m": "(m) tiny MoE, 8 experts top 2"}
    print(f"\nheld-out bits per byte after {minutes:g} min of training each")
    print(f"{'setup':30s} {'bits/byte':>9s} {'tokens':>10s} {'steps':>6s} {'tok/s':>7s}")
    for key, r in results.items():
        print(f"{names[key]:30s} {r['bits_per_byte']:9.4f} {r['tokens']:10,d} {r['steps']:6d} "
              f"{r['tokens'] / r['seconds']:7.0f}")
    if "a" in results and "m" in results:
        diff, ratio = results["m"]["bits_per_byte"] - results["a"]["bits_per_byte"], results["m"]["tokens"] / results["a"]["tokens"]
        print(f"(m) MoE against (a) dense at the same clock: {diff:+.4f} bits per byte (negative: the MoE wins), "
              f"{ratio:.2f}x the tokens")
    if "a" in results and ("b" in results or "c" in results):
        others = [results[k]["bits_per_byte"] for k in ("b", "c") if k in results]
        if others:
            print(f"(a) against the better of the others: {results['a']['bits_per_byte'] - min(others):+.4f} "
                  "bits per byte (goal <= -0.05)")
    if "a" in results and "b" in results and results["b"]["curve"]:
        target = results["b"]["curve"][-1][1]
        reach = tokens_to_reach(results["a"]["curve"], target)
        b_tokens = results["b"]["curve"][-1][0]
        if reach is None:
            print(f"(a) never reached (b)'s final periodic figure {target:.4f}")
        else:
            print(f"(a) reaches (b)'s final periodic figure {target:.4f} after {reach:,.0f} tokens; (b) needed "
                  f"{b_tokens:,d}: {b_tokens / reach:.2f}x fewer (goal >= 1.5x)")

    if "a15" in results and "b" in results:
        a15, b = results["a15"], results["b"]
        verdict = "reaches" if a15["bits_per_byte"] <= b["bits_per_byte"] else "does not reach"
        print(f"(a) on {a15['tokens']:,d} tokens ({b['tokens'] / a15['tokens']:.2f}x fewer than (b)'s "
              f"{b['tokens']:,d}) ends at {a15['bits_per_byte']:.4f}: {verdict} (b)'s final {b['bits_per_byte']:.4f} "
              "(goal: reaches it with >= 1.5x fewer tokens)")


if __name__ == "__main__":
    main()
