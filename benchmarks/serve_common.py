"""Shared by the serve_* benchmarks: the benchmark model (GPT-2 shape, 6 x 384, vocabulary 50304, fp32)
in a model dir, a Hugging Face twin with the same weights, and a server in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from groundup.model.config import ModelConfig
from groundup.model.io import save_model_dir
from groundup.model.transformer import Transformer

ROOT = Path(__file__).resolve().parents[1]
LAYERS, HEADS, WIDTH, VOCAB, BLOCK = 6, 6, 384, 50304, 1024


def bench_config() -> ModelConfig:
    return ModelConfig.gpt2(vocab_size=VOCAB, block_size=BLOCK, n_layer=LAYERS, n_head=HEADS, n_embd=WIDTH,
                            init_std=0.05)


def bench_tokenizer(out: Path) -> Path:
    """A small byte-level BPE trained on the embedded corpus (the model's vocabulary is padded above it)."""
    if (out / "tokenizer.json").is_file():
        return out
    import itertools
    import json

    from groundup.corpus import stdlib_documents
    from groundup.tokenizer import run as tokenizer_stage

    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside the tokenizer dir, not in it: a stage never writes into a folder holding its input.
    corpus = out.parent / "tokenizer-corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for doc in itertools.islice(stdlib_documents(), 200):
            f.write(json.dumps({"text": doc.text[:4000]}) + "\n")
    return tokenizer_stage.run(tokenizer_stage.Config(data=str(corpus), out=out, vocab_size=2048))


def bench_model_dir(work: Path, seed: int = 0) -> Path:
    out = work / "model"
    if (out / "manifest.json").is_file():
        return out
    tok = bench_tokenizer(work / "tokenizer")
    torch.manual_seed(seed)
    return save_model_dir(out, Transformer(bench_config()), tokenizer_file=tok, stage="benchmark", config={})


def to_hf_gpt2(model: Transformer):
    """A transformers GPT2LMHeadModel holding the same weights (Conv1D layers take transposed matrices)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                    n_layer=c.n_layer, n_head=c.n_head, layer_norm_epsilon=c.norm_eps,
                                    activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                    attn_pdrop=0.0, tie_word_embeddings=True))
    sd = {"transformer.wte.weight": model.tok_embeddings.weight, "transformer.wpe.weight": model.pos_embeddings.weight,
          "transformer.ln_f.weight": model.final_norm.weight, "transformer.ln_f.bias": model.final_norm.bias}
    for i, b in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        sd.update({p + "ln_1.weight": b.attn_norm.weight, p + "ln_1.bias": b.attn_norm.bias,
                   p + "ln_2.weight": b.mlp_norm.weight, p + "ln_2.bias": b.mlp_norm.bias,
                   p + "attn.c_attn.weight": b.attn.qkv.weight.t(), p + "attn.c_attn.bias": b.attn.qkv.bias,
                   p + "attn.c_proj.weight": b.attn.proj.weight.t(), p + "attn.c_proj.bias": b.attn.proj.bias,
                   p + "mlp.c_fc.weight": b.mlp.fc.weight.t(), p + "mlp.c_fc.bias": b.mlp.fc.bias,
                   p + "mlp.c_proj.weight": b.mlp.proj.weight.t(), p + "mlp.c_proj.bias": b.mlp.proj.bias})
    missing, unexpected = hf.load_state_dict({k: v.detach().contiguous() for k, v in sd.items()}, strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight") and ".attn.bias" not in m]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`groundup serve` in a subprocess on a free loopback port."""

    def __init__(self, model_dir: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.proc = subprocess.Popen([sys.executable, "-m", "groundup.cli", "serve", "--model", str(model_dir),
                                      "--port", str(self.port), "--log_level", "warning", *args], env=env)
        import httpx

        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited at start")
            time.sleep(0.2)
        raise RuntimeError("the server did not start in 120 s")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
