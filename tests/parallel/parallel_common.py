"""What the parallel tests share: the tiny pretrain configuration (a Llama-style model: fused qkv and SwiGLU
fc), the launcher of 2 gloo ranks, and a run's losses and weights."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from groundup.model.config import ModelConfig
from groundup.parallel.config import ParallelConfig
from groundup.train import pretrain
from groundup.train.loop import LoopConfig
from groundup.train.muon import MuonConfig
from groundup.train.optim import OptimConfig

MODEL_ARGS = dict(n_layer=2, n_embd=32, n_head=4, n_kv_head=2, vocab_size=320, block_size=32, dropout=0.0)
MODEL = ModelConfig.from_name("tiny-llama", **MODEL_ARGS)


# lr 3e-3: at 1e-2 the tiny model's trajectory is chaotic enough that last-bit differences between summing
# gradients in one process and averaging them across ranks grow past 1e-5 in 20 steps.
PP_MODEL = {"n_layer": 8, "tie_embeddings": False}
"""The pipeline tests' model: MODEL with 8 blocks (4 stages of 2, or 8 of 1 for two stages per rank) and an
untied head (the head and the embeddings live on different stages)."""


def make_config(*, tokens, out, parallel=None, optim=None, device="cpu", compile=False, batch_size=2,
                model=None, doc_mask=False, **train) -> pretrain.Config:
    """``model``: overrides of the tiny model's settings (a mixture of experts, the pipeline tests' shape)."""
    loop = {"max_steps": 20, "grad_accum": 2, "checkpoint_every": 10, "eval_every": 0, "log_every": 1,
            "progress_bar": False, "keep_checkpoints": 3, **train}
    optim = {"lr": 3e-3, "warmup_steps": 2, **(optim or {})}
    if isinstance(optim.get("muon"), dict):  # the worker's runs arrive as JSON
        optim["muon"] = MuonConfig(**optim["muon"])
    model_cfg = ModelConfig.from_name("tiny-llama", **{**MODEL_ARGS, **model}) if model else MODEL
    return pretrain.Config(tokens=tokens, out=out, model=model_cfg, optim=OptimConfig(**optim),
                           train=LoopConfig(**loop), parallel=ParallelConfig(**(parallel or {})),
                           batch_size=batch_size, seq_len=32, eval_windows=2, final_eval_stride=32, device=device,
                           compile=compile, seed=7, doc_mask=doc_mask)


def losses(run_dir: Path) -> dict[int, float]:
    """Step -> loss of a run's metrics.jsonl (events left out)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r and "event" not in r}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def assert_same_losses(a: dict[int, float], b: dict[int, float], steps, tol: float = 1e-5) -> None:
    for step in steps:
        assert abs(a[step] - b[step]) <= tol, (step, a[step], b[step])


HERE = Path(__file__).parent
SRC = HERE.parents[1] / "src"


def torchrun(runs: list[dict], env: dict | None = None, check: bool = True, *, nproc: int = 2,
             worker: str = "parallel_worker.py") -> subprocess.CompletedProcess:
    """Launch ``nproc`` gloo ranks of ``worker`` (parallel_worker.py: ``runs`` one after the other, see its
    docstring)."""
    runs = [{k: str(v) if isinstance(v, Path) else v for k, v in run.items()} for run in runs]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(HERE / worker), json.dumps(runs)]
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)]), "OMP_NUM_THREADS": "1",
                **(env or {})}
    done = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return done


@contextlib.contextmanager
def preset_expert_bias(values: list[float] | None):
    """MoE layers built inside start with this routing bias (moe_balance='bias'): a large one on some experts
    sends every token to them."""
    from groundup.model.moe import MoE

    original = MoE.__init__
    if values is not None:
        def init(self, *args, **kwargs):
            original(self, *args, **kwargs)
            self.expert_bias.copy_(torch.tensor(values))

        MoE.__init__ = init
    try:
        yield
    finally:
        MoE.__init__ = original
