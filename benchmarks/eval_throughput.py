"""Log-likelihood requests per second: groundup's evaluator against lm-evaluation-harness's HF backend.

The same model on both sides: a groundup ``tiny-llama`` (4 layers, 256 wide, 8,192-token vocabulary,
256 positions, random weights), and its transformers copy (``groundup.interop.hf.to_transformers``), in fp32 on the CPU. The work is a
multiple-choice-shaped set of requests: ``--contexts`` contexts of 20 to 200 tokens, each with 4
continuations of 1 to 12 tokens. Both sides get the same already-tokenized requests through
lm-eval's ``_loglikelihood_tokens`` (``GroundupLM`` for groundup, ``HFLM`` for the peer) at the same
batch size, so the timing covers scoring only, not tokenization. Each side runs ``--repeats`` times,
alternating; the table shows the medians, the ratio, and the largest difference between the two
sides' log-likelihoods (they must agree to ~1e-4 in fp32).

    python benchmarks/eval_throughput.py [--contexts 100] [--batch-size 32] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from groundup.evaluate.hf_reference import to_transformers
from groundup.evaluate.lm_eval import GroundupLM
from groundup.model.config import ModelConfig
from groundup.model.transformer import Transformer


def make_requests(n_contexts: int, vocab: int, seed: int = 0):
    rng = random.Random(seed)
    requests = []
    for _ in range(n_contexts):
        context = [rng.randrange(vocab) for _ in range(rng.randint(20, 200))]
        for _ in range(4):
            cont = [rng.randrange(vocab) for _ in range(rng.randint(1, 12))]
            requests.append((("", ""), context, cont))  # (strings, context ids, continuation ids) as lm-eval passes
    return requests


def tiny_tokenizer(folder: Path):
    """A small BPE (the peer's HFLM needs a tokenizer object, though token-level requests never use it)."""
    import itertools

    from groundup.corpus import stdlib_documents
    from groundup.evaluate.hf_reference import hf_tokenizer
    from groundup.tokenizer import run as tokenizer_stage

    data = folder / "corpus.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for doc in itertools.islice(stdlib_documents(), 40):
            f.write(json.dumps({"text": doc.text[:2000]}) + "\n")
    tok_dir = tokenizer_stage.run(tokenizer_stage.Config(data=str(data), out=folder / "tok", vocab_size=300))
    from groundup.tokenizer import Tokenizer

    return Tokenizer.from_file(tok_dir / "tokenizer.json"), hf_tokenizer(tok_dir / "tokenizer.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from lm_eval.models.huggingface import HFLM

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny-llama")).eval()
    hf_model = to_transformers(model).float().eval()
    with tempfile.TemporaryDirectory() as tmp:
        tok, hf_tok = tiny_tokenizer(Path(tmp))
    ours = GroundupLM(model=model, tokenizer=tok, batch_size=args.batch_size)
    peer = HFLM(pretrained=hf_model, tokenizer=hf_tok, batch_size=args.batch_size,
                max_length=model.config.block_size, device="cpu", logits_cache=True)
    requests = make_requests(args.contexts, model.config.vocab_size)

    times = {"groundup": [], "lm-eval HF": []}
    outputs = {}
    with torch.inference_mode():
        # one warm-up pass each, untimed
        ours._loglikelihood_tokens(requests[:64], disable_tqdm=True)
        peer._loglikelihood_tokens(requests[:64], disable_tqdm=True)
        for _ in range(args.repeats):
            for name, lm in (("groundup", ours), ("lm-eval HF", peer)):
                start = time.perf_counter()
                outputs[name] = lm._loglikelihood_tokens(requests, disable_tqdm=True)
                times[name].append(time.perf_counter() - start)
    diff = max(abs(a[0] - b[0]) for a, b in zip(outputs["groundup"], outputs["lm-eval HF"], strict=True))
    greedy_agree = sum(a[1] == b[1] for a, b in zip(outputs["groundup"], outputs["lm-eval HF"], strict=True))

    n = len(requests)
    rate = {name: n / statistics.median(ts) for name, ts in times.items()}
    print(f"model tiny-llama ({sum(p.numel() for p in model.parameters()):,} parameters), {n} requests "
          f"({args.contexts} contexts x 4 continuations), batch size {args.batch_size}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'evaluator':<12} {'requests/s (median)':>20} {'runs (s)':>28}")
    for name, ts in times.items():
        print(f"{name:<12} {rate[name]:>20.1f} {', '.join(f'{t:.2f}' for t in ts):>28}")
    ratio = rate["groundup"] / rate["lm-eval HF"]
    print(f"ratio groundup / lm-eval HF: {ratio:.2f}x")
    print(f"largest log-likelihood difference: {diff:.2e}; is_greedy agrees on {greedy_agree}/{n}")
    if args.json:
        args.json.write_text(json.dumps({"requests": n, "batch_size": args.batch_size, "seconds": times,
                                         "requests_per_s": rate, "ratio": ratio, "max_abs_diff": diff}, indent=2))


if __name__ == "__main__":
    main()
