"""Throughput under load: 32 concurrent streaming clients against the same requests one at a time.

`groundup serve` runs the benchmark model (GPT-2 shape, 6 x 384, vocabulary 50304, fp32) in a subprocess
on loopback. The same list of requests (distinct prompts, 32 greedy tokens each, streamed) is sent once
one at a time and once by 32 concurrent clients; the script reports total generated tokens/s of
each, their ratio, and time to first token (p50/p99) under load. Repeated ``--rounds`` times; medians.

    PYTHONPATH=src python benchmarks/serve_load.py [--requests 32] [--concurrency 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from groundup.infer.engine import percentile
from serve_common import ServerProcess, bench_model_dir


async def one(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> tuple[int, float]:
    started = time.perf_counter()
    first, tokens = None, 0
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - started
    return tokens, first if first is not None else time.perf_counter() - started


async def load(url: str, prompts: list[str], concurrency: int, max_tokens: int) -> tuple[float, list[float]]:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def task(p: str):
            async with sem:
                return await one(client, url, p, max_tokens)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(task(p) for p in prompts))
        elapsed = time.perf_counter() - t0
    return sum(t for t, _ in results) / elapsed, [f for _, f in results]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max_tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "groundup-serve-bench")
    args = ap.parse_args()
    model_dir = bench_model_dir(args.work)
    server = ServerProcess(model_dir, "--served_model_name", "bench", "--engine.max_seqs", str(args.concurrency),
                           "--limits.max_concurrent_requests", str(args.concurrency * 2))
    prompts = [f"def function_{i}(x, y):\n    return x * {i} + y" for i in range(args.requests)]
    try:
        asyncio.run(load(server.url, prompts[:2], 1, 8))  # warm-up
        serial, loaded, p50, p99 = [], [], [], []
        for _ in range(args.rounds):
            rate, _ = asyncio.run(load(server.url, prompts, 1, args.max_tokens))
            serial.append(rate)
            rate, ttft = asyncio.run(load(server.url, prompts, args.concurrency, args.max_tokens))
            loaded.append(rate)
            p50.append(percentile(ttft, 50))
            p99.append(percentile(ttft, 99))
    finally:
        server.close()
    ratio = statistics.median(b / a for a, b in zip(serial, loaded, strict=True))
    print(f"{args.requests} requests x {args.max_tokens} tokens, streamed, loopback; medians of {args.rounds} rounds "
          f"(shared machine: timings are noisy)")
    print(f"one at a time:            {statistics.median(serial):8.1f} tokens/s")
    print(f"{args.concurrency} concurrent clients:    {statistics.median(loaded):8.1f} tokens/s   "
          f"ratio {ratio:.2f}x")
    print(f"time to first token under load: p50 {statistics.median(p50) * 1000:.0f} ms, "
          f"p99 {statistics.median(p99) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
