"""Load and fault test of `groundup serve`: bad requests, disconnects and 1,000 requests at 32 concurrency.

A small random model (2 layers, 128 wide, over the benchmark tokenizer) is served in a subprocess on
loopback. The script sends a mix of valid requests (completions and chat, streamed or not, some with a
JSON schema) and faulty ones: malformed JSON, wrong types, negative and huge max_tokens, oversized
prompts (in tokens and in bytes), unknown model names, bad response formats, wrong methods, and
streaming clients that disconnect after a few events. It checks that every answer is 2xx or 4xx (no
5xx, no dropped connection), that the server is alive afterwards, and that its resident memory goes
back near the level measured after warm-up. Bounded by ``--requests`` and ``--deadline`` seconds.

    PYTHONPATH=src python benchmarks/serve_fault.py [--requests 1000] [--concurrency 32] [--deadline 600]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import torch

from groundup.model.config import ModelConfig
from groundup.model.io import save_model_dir
from groundup.model.transformer import Transformer
from serve_common import ServerProcess, bench_tokenizer

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "maxLength": 5}},
          "required": ["a", "b"], "additionalProperties": False}


def fault_model(work: Path) -> Path:
    out = work / "fault-model"
    if (out / "manifest.json").is_file():
        return out
    tok = bench_tokenizer(work / "tokenizer")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=2048, block_size=512, n_layer=2, n_head=4, n_embd=128))
    return save_model_dir(out, model, tokenizer_file=tok, stage="benchmark", config={})


def cases() -> list[tuple[str, str, str, bool]]:
    """(name, route, raw body, stream) for every kind of request the mix draws from."""
    ok = {"model": "m", "prompt": "def f(x):", "max_tokens": 8, "temperature": 0.8}
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    j = json.dumps
    return [
        ("ok completion", "/v1/completions", j(ok), False),
        ("ok completion stream", "/v1/completions", j({**ok, "stream": True}), True),
        ("ok chat", "/v1/chat/completions", j(chat), False),
        ("ok chat stream", "/v1/chat/completions", j({**chat, "stream": True}), True),
        ("ok echo logprobs", "/v1/completions", j({**ok, "echo": True, "logprobs": 3}), False),
        ("ok json_schema", "/v1/chat/completions", j({**chat, "max_tokens": 30, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}}), False),
        ("malformed json", "/v1/completions", '{"prompt": "x", ', False),
        ("not an object", "/v1/completions", "[1, 2, 3]", False),
        ("empty body", "/v1/completions", "", False),
        ("wrong type prompt", "/v1/completions", j({**ok, "prompt": {"a": 1}}), False),
        ("wrong type temperature", "/v1/completions", j({**ok, "temperature": "hot"}), False),
        ("negative max_tokens", "/v1/completions", j({**ok, "max_tokens": -5}), False),
        ("huge max_tokens", "/v1/completions", j({**ok, "max_tokens": 10**9}), False),
        ("oversized prompt tokens", "/v1/completions", j({**ok, "prompt": "word " * 3000}), False),
        ("oversized body", "/v1/completions", j({**ok, "prompt": "x" * 200_000}), False),
        ("unknown model", "/v1/completions", j({**ok, "model": "gpt-5"}), False),
        ("bad token ids", "/v1/completions", j({**ok, "prompt": [1, 2, 10**9]}), False),
        ("bad schema", "/v1/chat/completions", j({**chat, "response_format": {"type": "json_schema",
                                                                            "json_schema": {"schema": {"type": 5}}}}), False),
        ("bad role", "/v1/chat/completions", j({**chat, "messages": [{"role": "x", "content": "y"}]}), False),
        ("messages not a list", "/v1/chat/completions", j({**chat, "messages": "hi"}), False),
        ("logprobs too many", "/v1/completions", j({**ok, "logprobs": 1000}), False),
        ("n too big", "/v1/completions", j({**ok, "n": 1000}), False),
        ("nan temperature", "/v1/completions", '{"prompt": "x", "temperature": NaN}', False),
        ("disconnect mid-stream", "/v1/completions", j({**ok, "max_tokens": 200, "stream": True, "ignore_eos": True}),
         True),
    ]


async def send(client: httpx.AsyncClient, url: str, case, statuses: Counter, failures: list) -> None:
    name, route, body, stream = case
    headers = {"content-type": "application/json"}
    try:
        if name == "wrong method":
            r = await client.get(url + route)
            statuses[r.status_code] += 1
            return
        if stream:
            async with client.stream("POST", url + route, content=body, headers=headers) as r:
                statuses[r.status_code] += 1
                n = 0
                async for line in r.aiter_lines():
                    n += bool(line)
                    if name.startswith("disconnect") and n >= 3:
                        break  # leave mid-stream: closing the response drops the connection
                    if line.startswith("data: {") and '"error"' in line[:20]:
                        failures.append((name, line[:200]))
        else:
            r = await client.post(url + route, content=body, headers=headers)
            statuses[r.status_code] += 1
            if r.status_code >= 400:
                err = r.json().get("error", {})
                if not {"message", "type", "param", "code"} <= set(err):
                    failures.append((name, f"error not in OpenAI shape: {r.text[:200]}"))
            if name == "ok json_schema" and r.status_code == 200:
                choice = r.json()["choices"][0]
                if choice["finish_reason"] == "stop":
                    json.loads(choice["message"]["content"])
        if r.status_code >= 500:
            failures.append((name, f"{r.status_code}"))
        if name.startswith("ok") and r.status_code != 200:
            failures.append((name, f"a valid request got {r.status_code}"))
        if not name.startswith(("ok", "disconnect")) and r.status_code < 400:
            failures.append((name, f"a faulty request got {r.status_code}"))
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        statuses["transport error"] += 1
        failures.append((name, repr(e)))


async def main_async(args) -> int:
    model_dir = fault_model(args.work)
    server = ServerProcess(model_dir, "--served_model_name", "m", "--engine.max_seqs", "16",
                           "--limits.max_prompt_tokens", "400", "--limits.max_request_bytes", "65536",
                           "--limits.max_tokens", "256", "--limits.max_concurrent_requests", "64")
    all_cases = cases() + [("wrong method", "/v1/completions", "", False)]
    rng = random.Random(0)
    statuses: Counter = Counter()
    failures: list = []
    try:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=args.concurrency + 8)) as client:
            for case in all_cases[:6]:  # warm-up: every valid kind once (grammar compiler built, caches warm)
                await send(client, server.url, case, Counter(), [])
            baseline = server.rss_mb()
            started = time.perf_counter()
            plan = [all_cases[i % len(all_cases)] for i in range(len(all_cases))]
            plan += [rng.choice(all_cases) for _ in range(args.requests - len(plan))]
            sem = asyncio.Semaphore(args.concurrency)

            async def task(case):
                if time.perf_counter() - started > args.deadline:
                    statuses["skipped (deadline)"] += 1
                    return
                async with sem:
                    await send(client, server.url, case, statuses, failures)

            await asyncio.gather(*(task(c) for c in plan))
            elapsed = time.perf_counter() - started
            # let cancelled sequences drain, then measure
            for _ in range(100):
                metrics = (await client.get(server.url + "/metrics")).text
                running = [line for line in metrics.splitlines() if line.startswith("groundup_num_requests_running")]
                if running and float(running[0].split()[-1]) == 0:
                    break
                await asyncio.sleep(0.2)
            alive = (await client.get(server.url + "/health")).status_code == 200
            after = server.rss_mb()
            cancelled = next((line.split()[-1] for line in metrics.splitlines()
                              if line.startswith("groundup_requests_cancelled_total")), "?")
    finally:
        server.close()
    five_xx = sum(n for code, n in statuses.items() if isinstance(code, int) and code >= 500)
    print(f"{sum(statuses.values())} requests at concurrency {args.concurrency} in {elapsed:.1f} s "
          f"(kinds: {len(all_cases)}, {len(all_cases) - 7} of them faulty or disconnecting)")
    print("status codes:", dict(sorted(statuses.items(), key=lambda kv: str(kv[0]))))
    print(f"5xx: {five_xx}; transport errors: {statuses['transport error']}; cancelled by disconnect: {cancelled}")
    print(f"server alive afterwards: {alive}; RSS after warm-up {baseline:.0f} MB, after the run {after:.0f} MB "
          f"({after - baseline:+.0f} MB)")
    for name, why in failures[:10]:
        print(f"  problem: {name}: {why}")
    ok = five_xx == 0 and alive and not failures and statuses["transport error"] == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--deadline", type=float, default=600)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "groundup-serve-bench")
    raise SystemExit(asyncio.run(main_async(ap.parse_args())))


if __name__ == "__main__":
    main()
