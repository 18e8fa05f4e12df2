"""Latent attention's decode step: the absorbed form (attention over the cached latents) against decompressing the
latents into every head's keys and values, and the cache against multi-head attention of the same heads.

One model (latent attention, 4 layers, width 1024, 16 heads, q_lora_rank 256, kv_lora_rank 256, 64 + 32
query/key and 64 value features per head), ``--rows`` sequences prefilled to ``--context`` tokens, then decode
steps of one token each through ``groundup.infer.decode.Decoder``. The decompressed variant is the same model
with ``transformer.ABSORBED_ROWS = 0`` (every cached forward decompresses). Rounds interleave the variants so a
neighbour's load hits both alike; the table reports medians. Greedy tokens of both are compared.

    python benchmarks/mla_decode.py [--context 1024] [--rows 4] [--rounds 5] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from groundup.infer.decode import Decoder
from groundup.model import transformer
from groundup.model.config import ModelConfig

SHAPE = dict(vocab_size=1024, n_layer=4, n_head=16, n_embd=1024, attention="mla", q_lora_rank=256,
             kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64)


def decoder(model: transformer.Transformer, rows: int, context: int) -> Decoder:
    dec = Decoder(model, num_slots=rows)
    gen = torch.Generator().manual_seed(0)
    for slot in range(rows):
        dec.prefill(slot, torch.randint(0, SHAPE["vocab_size"], (context,), generator=gen).tolist())
    return dec


def step_seconds(dec: Decoder, absorbed: bool, rows: int, position: int, steps: int) -> tuple[float, torch.Tensor]:
    transformer.ABSORBED_ROWS = 64 if absorbed else 0
    times, logits = [], None
    for i in range(steps):
        t0 = time.perf_counter()
        logits = dec.rows(list(range(rows)), [position + i] * rows, [5] * rows)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ModelConfig.llama(block_size=args.context + args.rounds * args.steps + 1, **SHAPE)
    torch.manual_seed(0)
    model = transformer.Transformer(config).eval()
    decoders = {True: decoder(model, args.rows, args.context), False: decoder(model, args.rows, args.context)}
    results: dict[bool, list[float]] = {True: [], False: []}
    agree = True
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        out = {}
        for absorbed in order:
            seconds, out[absorbed] = step_seconds(decoders[absorbed], absorbed, args.rows,
                                                  args.context + r * args.steps, args.steps)
            results[absorbed].append(seconds)
        agree &= torch.equal(out[True].argmax(-1), out[False].argmax(-1))
    transformer.ABSORBED_ROWS = 64
    absorbed, decompressed = statistics.median(results[True]), statistics.median(results[False])
    mha = ModelConfig.llama(block_size=64, **{**SHAPE, "attention": "mha"})
    heads, kf, vf = config.kv_cache_entry
    cache_ratio = (2 * mha.kv_heads * mha.head_dim) / (heads * (kf + vf))
    report = {"context": args.context, "rows": args.rows, "threads": args.threads,
              "absorbed_ms_per_step": absorbed * 1e3, "decompressed_ms_per_step": decompressed * 1e3,
              "speedup": decompressed / absorbed, "greedy_agree": agree,
              "cache_values_per_token_layer": heads * (kf + vf),
              "mha_cache_values_per_token_layer": 2 * mha.kv_heads * mha.head_dim, "cache_ratio": cache_ratio}
    print(f"| decode step ({args.rows} rows at {args.context} tokens, {args.threads} thread(s)) | ms |")
    print("|---|---|")
    print(f"| absorbed | {absorbed * 1e3:.1f} |")
    print(f"| decompressed | {decompressed * 1e3:.1f} |")
    print(f"speedup {decompressed / absorbed:.2f}x; greedy tokens agree: {agree}; cache per token and layer "
          f"{heads * (kf + vf)} values against {2 * mha.kv_heads * mha.head_dim} for MHA ({cache_ratio:.1f}x)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
