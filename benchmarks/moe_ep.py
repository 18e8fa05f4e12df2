"""Expert parallelism on CPU (gloo): parity with one process, and the expert load under bias balancing.

A tiny Llama-style mixture of experts (8 routed experts, 2 per token) pretrains on the embedded corpus (the
standard library's text, tokenized here by a tokenizer trained here) three times, with the same seed and the
same global batches:

- one process, DeepSeek-V3's auxiliary-loss-free bias balancing (``moe_balance='bias'``);
- ``--nproc`` ranks under torchrun with ``parallel.expert_parallel=--ep`` (each rank holds 8/ep experts, tokens
  travel by all-to-all), the same balancing, DDP or FSDP2 (``--data-parallel``);
- one process with no balancing at all (auxiliary loss weight 0), for the load one gets without it.

It prints the largest loss difference between the one-process and the expert-parallel run over the steps, the
largest weight difference of their final model dirs, and the expert load: max over mean tokens per expert of
each step's global batch, summed over the layers and for the worst layer alone, as the mean and the largest
value over the steps after ``--warmup``, and of the tokens of all those steps together (layers summed). A
step's load is that of one batch (64 rows of 64 tokens by default, rows of one document routing alike), so a
smaller batch shows more step-to-step noise: at ``--batch 8`` (16 rows) the worst layer's mean was 1.36, at
the default 1.19. Writes the figures as JSON (``--json``).

Parity: the expert-parallel run computes each expert's product over both ranks' tokens at once, one process
over each micro-batch in turn, so their sums round differently (about 1e-7). A top-k choice that such a
difference flips is a discrete change, and the runs then drift apart as two seeds would: the line reports the
first step whose losses differ and the largest difference over the first 20 steps beside the largest over the
whole run (at ``--batch 8`` the two stayed within 1e-6 for 300 steps; at the default they first differed at
step 23).

    python benchmarks/moe_ep.py [--steps 300] [--warmup 100] [--nproc 2] [--ep 2] [--data-parallel ddp]

With ``--nproc 4 --ep 2`` each expert lives on two ranks (two EP groups of two): their gradients are summed
over the replicas as well.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# DeepSeek-V3's router: sigmoid scores, bias balancing (a faster bias rate than its 1e-3, for a run of minutes)
MOE = {"moe_experts": 8, "moe_top_k": 2, "moe_hidden": 64, "moe_score": "sigmoid", "moe_balance": "bias",
       "moe_bias_rate": 1e-2}


def config(args, out: Path, tokens: Path, *, parallel: dict | None = None, moe: dict | None = None):
    from groundup.model.config import ModelConfig
    from groundup.parallel.config import ParallelConfig
    from groundup.train import pretrain
    from groundup.train.loop import LoopConfig
    from groundup.train.optim import OptimConfig

    model = ModelConfig.from_name("tiny-llama", n_layer=2, n_embd=64, n_head=4, n_kv_head=2, vocab_size=512,
                                  block_size=64, dropout=0.0, **{**MOE, **(moe or {})})
    loop = LoopConfig(max_steps=args.steps, grad_accum=args.grad_accum, checkpoint_every=0, eval_every=0,
                      log_every=1, progress_bar=False, spike_zscore=None)
    return pretrain.Config(tokens=tokens, out=out, model=model, optim=OptimConfig(lr=3e-3, warmup_steps=10),
                           train=loop, parallel=ParallelConfig(**(parallel or {})), batch_size=args.batch,
                           seq_len=64, eval_windows=2, device="cpu", seed=7, overwrite=True)


def prepare(work: Path) -> Path:
    """Token shards of 300 standard-library documents under a 512-token BPE trained on them (kept in ``work``)."""
    from groundup.corpus import stdlib_documents
    from groundup.tokenizer import run as tokenizer_stage
    from groundup.tokens import tokenize as tokenize_stage

    tokens = work / "tokens"
    if (tokens / "meta.json").is_file():
        return tokens
    work.mkdir(parents=True, exist_ok=True)
    shard = work / "corpus.jsonl"
    with open(shard, "w", encoding="utf-8") as f:
        for doc in itertools.islice(stdlib_documents(), 300):
            f.write(json.dumps({"text": doc.text[:6000]}) + "\n")
    tok = tokenizer_stage.run(tokenizer_stage.Config(data=str(shard), out=work / "tokenizer", vocab_size=512))
    return tokenize_stage.run(tokenize_stage.Config(data=str(shard), tokenizer=tok, workers=1, out=tokens))


def records(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in lines if "loss" in r and "event" not in r]


def load_figures(run_dir: Path, warmup: int) -> dict[str, float]:
    rows = [r for r in records(run_dir) if r["step"] > warmup]
    shares = [[r[f"moe_load_{e}"] for e in range(MOE["moe_experts"])] for r in rows]
    total = [sum(column) for column in zip(*shares, strict=True)]
    out = {"moe_load_max_over_mean_all_steps": max(total) / statistics.fmean(total)}
    for key in ("moe_load_max_over_mean", "moe_layer_load_max_over_mean"):
        values = [r[key] for r in rows if key in r]
        out[f"{key}_mean"] = statistics.fmean(values)
        out[f"{key}_max"] = max(values)
    return out


def worker(args) -> None:
    from groundup.train import pretrain

    spec = json.loads(args.worker)
    pretrain.run(config(args, Path(spec["out"]), Path(spec["tokens"]), parallel=spec["parallel"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=100, help="steps left out of the load figures")
    parser.add_argument("--batch", type=int, default=32, help="sequences of 64 tokens per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (global; default 2, or nproc)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--ep", type=int, default=2)
    parser.add_argument("--data-parallel", default="ddp", choices=["ddp", "fsdp"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/groundup-bench-moe-ep"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    args.grad_accum = args.grad_accum or max(2, args.nproc)
    if args.worker:
        worker(args)
        return
    import torch
    from safetensors.torch import load_file

    from groundup.train import pretrain

    torch.set_num_threads(1)
    tokens = prepare(args.work)
    single, ep_run, unbalanced = args.work / "single", args.work / "ep", args.work / "unbalanced"
    t0 = time.perf_counter()
    pretrain.run(config(args, single, tokens))
    single_s = time.perf_counter() - t0
    spec = {"out": str(ep_run), "tokens": str(tokens),
            "parallel": {"data_parallel": args.data_parallel, "expert_parallel": args.ep}}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
           __file__, "--worker", json.dumps(spec), "--steps", str(args.steps), "--batch", str(args.batch),
           "--grad-accum", str(args.grad_accum)]
    t0 = time.perf_counter()
    subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}, check=True,
                   capture_output=True)
    ep_s = time.perf_counter() - t0
    pretrain.run(config(args, unbalanced, tokens, moe={"moe_balance": "aux_loss", "moe_aux_loss_coef": 0.0}))

    a = {r["step"]: r["loss"] for r in records(single)}
    b = {r["step"]: r["loss"] for r in records(ep_run)}
    wa, wb = load_file(str(single / "model.safetensors")), load_file(str(ep_run / "model.safetensors"))
    result = {
        "steps": args.steps, "warmup": args.warmup, "nproc": args.nproc, "expert_parallel": args.ep,
        "data_parallel": args.data_parallel,
        "tokens_per_step": args.batch * 64 * args.grad_accum,
        "max_loss_diff": max(abs(a[s] - b[s]) for s in a),
        "max_loss_diff_first_20_steps": max(abs(a[s] - b[s]) for s in a if s <= 20),
        "first_step_losses_differ": min((s for s in a if a[s] != b[s]), default=None),
        "max_weight_diff": max(float((wa[k] - wb[k]).abs().max()) for k in wa),
        "final_loss": {"one_process": a[args.steps], "expert_parallel": b[args.steps]},
        "load_expert_parallel_bias": load_figures(ep_run, args.warmup),
        "load_one_process_bias": load_figures(single, args.warmup),
        "load_unbalanced": load_figures(unbalanced, args.warmup),
        "seconds": {"one_process": single_s, "expert_parallel": ep_s},
    }
    print(f"{args.steps} steps of {result['tokens_per_step']} tokens, 8 experts top-2, "
          f"{args.nproc} ranks expert_parallel={args.ep} ({args.data_parallel}) vs one process:")
    print(f"  largest loss difference over the steps: {result['max_loss_diff']:.2e} (first 20 steps: "
          f"{result['max_loss_diff_first_20_steps']:.2e}; losses first differ at step "
          f"{result['first_step_losses_differ']})")
    print(f"  largest weight difference at the end:   {result['max_weight_diff']:.2e}")
    print(f"expert load after step {args.warmup} (max/mean tokens per expert of each step's global batch):")
    print(f"  {'run':<32} {'layers summed: mean':>20} {'max':>6} {'worst layer: mean':>18} {'max':>6} "
          f"{'all steps together':>19}")
    for label, key in (("expert parallel, bias balancing", "load_expert_parallel_bias"),
                       ("one process, bias balancing", "load_one_process_bias"),
                       ("one process, no balancing", "load_unbalanced")):
        f = result[key]
        print(f"  {label:<32} {f['moe_load_max_over_mean_mean']:>20.3f} {f['moe_load_max_over_mean_max']:>6.3f} "
              f"{f['moe_layer_load_max_over_mean_mean']:>18.3f} {f['moe_layer_load_max_over_mean_max']:>6.3f} "
              f"{f['moe_load_max_over_mean_all_steps']:>19.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
