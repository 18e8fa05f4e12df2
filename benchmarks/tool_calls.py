"""Tool calls: validity of constrained calls through the server, and the cost of constrained ``auto`` decoding.

Validity: ``--requests`` chat requests with tools at temperature 1 through ``groundup serve``'s app (in
process, under uvicorn, with the official ``openai`` client) against a random model over the benchmark
tokenizer of serve_common.py (``--shape test``: 2 x 64; ``tiny``: the main job's 4 x 256; or ``--model``), cycling through ``required`` (one call, and parallel calls),
a named tool and ``auto``. Every call must parse as strict JSON and validate against its tool's schema
with ``jsonschema``; a call cut by ``max_tokens`` counts as a failure.

Overhead: the engine in process, the same prompt decoded free and under the ``auto`` tool grammar (the
model writes text; the grammar watches for ``<tool_call>``), ``--tokens`` tokens at temperature 1, batch 1
and 8, medians of ``--rounds`` alternating rounds.

    PYTHONPATH=src python benchmarks/tool_calls.py [--shape test|tiny] [--requests 200] [--rounds 3] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jsonschema
import torch

from groundup.infer.sampling import SamplingParams
from groundup.tokenizer.chat import render_chat
from serve_structured import run_batch

SCHEMAS = {
    "get_weather": {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                    "properties": {"city": {"type": "string", "maxLength": 8},
                                   "days": {"type": "integer", "minimum": 1, "maximum": 7},
                                   "unit": {"enum": ["C", "F"]}}},
    "search": {"type": "object", "required": ["query"], "properties": {"query": {"type": "string", "maxLength": 8},
                                                                       "top": {"type": "boolean"}}},
    "add": {"type": "object", "required": ["a", "b"], "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
}
TOOLS = [{"type": "function", "function": {"name": n, "parameters": s}} for n, s in SCHEMAS.items()]
CHOICES = [("required", False), ("required", True), ({"type": "function", "function": {"name": "add"}}, True),
           ("auto", True)]


def tiny_model_dir(work: Path, shape: str = "test") -> Path:
    """A random model over the benchmark tokenizer: ``test`` 2 x 64 (as the tests' models), or ``tiny`` the
    main job's shape (recipes/tiny.yaml's model: 4 x 256, vocabulary 8,192) with room for the tools prompt."""
    from importlib import resources

    import yaml

    from groundup.model.config import ModelConfig
    from groundup.model.io import save_model_dir
    from groundup.model.transformer import Transformer
    from serve_common import VOCAB, bench_tokenizer

    out = work / f"{shape}-model"
    if (out / "manifest.json").is_file():
        return out
    torch.manual_seed(0)
    if shape == "test":
        config = ModelConfig(vocab_size=VOCAB, block_size=1024, n_layer=2, n_head=4, n_embd=64, init_std=0.2)
    else:
        recipe = yaml.safe_load(resources.files("groundup").joinpath("recipes/tiny.yaml").read_text())
        config = ModelConfig(**{**recipe["pretrain"]["model"], "block_size": 1024})
    return save_model_dir(out, Transformer(config), tokenizer_file=bench_tokenizer(work / "tokenizer"),
                          stage="benchmark", config={})


def check_calls(message, finish: str) -> tuple[int, int, str | None]:
    """(calls, valid calls, first failure) of one answer."""
    calls = message.tool_calls or []
    valid, failure = 0, None
    for call in calls:
        try:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
            valid += 1
        except (ValueError, jsonschema.ValidationError) as e:
            failure = failure or f"{call.function.name}: {e}"
    if finish == "length" and calls:  # (an auto answer that wrote text to the end opened no call)
        failure = failure or "cut by max_tokens"
    return len(calls), valid, failure


class InProcessServer:
    """The server's app under uvicorn on a free loopback port, in a thread."""

    def __init__(self, model_dir: Path, max_tokens: int) -> None:
        import threading

        import uvicorn

        from groundup.serve.app import create_app
        from groundup.serve.run import Config, EngineSettings, build_state
        from groundup.serve.settings import RequestLimits
        from serve_common import free_port

        self.state = build_state(Config(model=model_dir, engine=EngineSettings(max_seqs=8),
                                        limits=RequestLimits(max_tokens=max_tokens)))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.state), host="127.0.0.1", port=port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.state.engine.shutdown()


def validity(model_dir: Path, requests: int, max_tokens: int) -> dict:
    import openai

    server = InProcessServer(model_dir, max_tokens)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    stats = {str(c if isinstance(c, str) else "named") + ("" if p else "-single"): [0, 0, 0, 0] for c, p in CHOICES}
    failures = []
    try:
        for i in range(requests):
            choice, parallel = CHOICES[i % len(CHOICES)]
            out = client.chat.completions.create(
                model=server.state.model_name, messages=[{"role": "user", "content": f"Request {i}: help me."}],
                tools=TOOLS, tool_choice=choice, parallel_tool_calls=parallel, temperature=1.0,
                max_tokens=max_tokens, seed=i)
            c = out.choices[0]
            calls, valid, failure = check_calls(c.message, c.finish_reason)
            row = stats[str(choice if isinstance(choice, str) else "named") + ("" if parallel else "-single")]
            row[0] += 1
            row[1] += calls > 0
            row[2] += calls
            row[3] += valid
            if failure or (choice != "auto" and not calls):
                failures.append(f"request {i} ({choice}): {failure or 'no call'}")
    finally:
        server.close()
    return {"by_choice": {k: dict(zip(["requests", "with_calls", "calls", "valid_calls"], v, strict=True))
                          for k, v in stats.items()}, "failures": failures}


def overhead(model_dir: Path, rounds: int, tokens: int) -> dict:
    from groundup.infer.engine import Engine
    from groundup.infer.structured import GrammarFactory
    from groundup.model.io import load_model_dir

    model, tokenizer = load_model_dir(model_dir)
    engine = Engine(model, tokenizer, max_seqs=8)
    grammar = GrammarFactory(tokenizer, model.config.vocab_size).tool_calls(
        [{"name": n, "parameters": s} for n, s in SCHEMAS.items()], "auto")
    prompt = tokenizer.encode(render_chat([{"role": "user", "content": "Tell me a story."}], tools=TOOLS,
                                          add_generation_prompt=True))
    params = SamplingParams(temperature=1.0, seed=0, max_new_tokens=tokens, stop_at_eos=False)
    out = {}
    try:
        for batch in (1, 8):
            rates: dict[str, list[float]] = {"free": [], "auto": []}
            run_batch(engine, [prompt] * batch, params, None)  # warm up
            for _ in range(rounds):
                for name, g in (("free", None), ("auto", grammar)):
                    n, seconds = run_batch(engine, [prompt] * batch, params, g)
                    rates[name].append(n / seconds)
            free, auto = statistics.median(rates["free"]), statistics.median(rates["auto"])
            out[f"batch{batch}"] = {"free_tokens_per_s": free, "auto_tokens_per_s": auto, "auto_over_free": auto / free}
    finally:
        engine.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="model dir (default: a random model of --shape)")
    ap.add_argument("--shape", choices=("test", "tiny"), default="test",
                    help="the random model: 'test' 2 x 64, 'tiny' the main job's 4 x 256 (vocabulary 8,192)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "groundup-serve-bench")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = args.model or tiny_model_dir(args.work, args.shape)
    t0 = time.perf_counter()
    result = {"model": str(model_dir), "validity": validity(model_dir, args.requests, args.max_tokens)}
    result["validity_seconds"] = time.perf_counter() - t0
    result["overhead"] = overhead(model_dir, args.rounds, args.tokens)
    print(f"{'tool_choice':<16}{'requests':>9}{'with calls':>11}{'calls':>7}{'valid':>7}")
    for name, row in result["validity"]["by_choice"].items():
        print(f"{name:<16}{row['requests']:>9}{row['with_calls']:>11}{row['calls']:>7}{row['valid_calls']:>7}")
    print(f"failures: {len(result['validity']['failures'])}", *result["validity"]["failures"][:10], sep="\n  ")
    for batch, row in result["overhead"].items():
        print(f"{batch}: free {row['free_tokens_per_s']:.1f} tok/s, constrained auto {row['auto_tokens_per_s']:.1f} "
              f"tok/s ({row['auto_over_free']:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
