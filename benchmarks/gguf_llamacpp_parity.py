"""GGUF parity with llama.cpp: the exported file run by llama.cpp (llama-cpp-python) against groundup.

For each GGUF type (``--dtypes``: f32, f16, q8_0 by default; q4_0 and q4_k_m too) the model dir is exported
with ``groundup export --format gguf``; llama.cpp then loads the file, tokenizes the prompts with the GGUF's
own tokenizer (pre-tokenizer type, merges) and evaluates them. The table shows

- tokenizer agreement: llama.cpp's token ids equal groundup's on every prompt (code, English, CJK,
  emoji, whitespace runs);
- next-token logits: the largest absolute difference between llama.cpp's logits and groundup's at every
  position, and the same relative to the largest logit; whether the argmax (greedy next token) agrees;
- the same largest difference against groundup running the weights read back from the file
  (``read back``): for a quantized file this leaves out the weights' rounding, so what remains is
  llama.cpp's arithmetic (it rounds activations to 8 bits for quantized matrix products);
- prompt throughput: tokens/s of llama.cpp and of groundup (PyTorch, float32) over the same prompts,
  median of ``--repeats`` runs, and their ratio. For the tiny default model llama-cpp-python's per-call
  overhead (and copying every position's logits out) dominates; pass a real ``--model`` for speed.

llama.cpp runs with an f32 KV cache (its default is f16, which alone moves logits by about 1e-3).

llama-cpp-python compiles llama.cpp at install time, so it usually lives in its own environment. This
script runs llama.cpp in a child process with ``--llama-python`` (default: this interpreter when it can
import ``llama_cpp``, else ``/tmp/llcpp/bin/python``); the child needs only numpy and llama_cpp.

    python benchmarks/gguf_llamacpp_parity.py [--model MODEL_DIR] [--family llama|gpt2|mixtral] [--pattern gpt4|gpt2|digits] [--repeats 3]

Without ``--model`` a small random model of ``--family`` is built with a tokenizer trained on the
embedded corpus (random weights test the conversion as hard as trained ones: every tensor matters).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPTS = [
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "The standard library's modules are documented in the reference; it's 3.14 o'clock, isn't it?",
    "中文字符测试，日本語のテキスト、한국어 텍스트.",
    "Release 2026.12.07 costs $1,234,567.89; 31415926535 digits, x1000 and 0xFF at 10:45.",
    "Emoji 👍🏽 👨\u200d👩\u200d👧 🇫🇷 and   runs  of\t\tspaces\n\n\nand newlines   end",
]


# ---------------------------------------------------------------------------- child: llama.cpp only


def child(gguf_path: str, prompts_json: str, out_npz: str, repeats: int) -> None:
    """Tokenize and evaluate the prompts with llama.cpp; save ids, logits and the prompt-eval time."""
    from llama_cpp import Llama

    prompts = json.loads(Path(prompts_json).read_text(encoding="utf-8"))
    # An f32 KV cache (llama.cpp's default is f16), so the comparison measures the file, not the cache.
    llm = Llama(model_path=gguf_path, n_ctx=0, logits_all=True, verbose=False, n_threads=1, n_batch=512,
                type_k=0, type_v=0)
    arrays, seconds = {}, []
    for i, text in enumerate(prompts):
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        arrays[f"ids_{i}"] = np.array(ids, dtype=np.int64)
        times = []
        for _ in range(repeats):
            llm.reset()
            start = time.perf_counter()
            llm.eval(ids)
            times.append(time.perf_counter() - start)
        arrays[f"logits_{i}"] = np.array(llm.scores[: len(ids)], dtype=np.float32)
        seconds.append(sorted(times)[len(times) // 2])
    arrays["seconds"] = np.array(seconds)
    np.savez(out_npz, **arrays)


# ---------------------------------------------------------------------------- parent: groundup


def small_model_dir(root: Path, family: str, pattern: str = "gpt4") -> Path:
    import itertools

    import torch

    from groundup.corpus import stdlib_documents
    from groundup.model.config import ModelConfig
    from groundup.model.io import save_model_dir
    from groundup.model.transformer import Transformer
    from groundup.tokenizer import run as tokenizer_stage

    corpus = root / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for doc in itertools.islice(stdlib_documents(), 200):
            f.write(json.dumps({"text": doc.text[:4000]}) + "\n")
    tokenizer = tokenizer_stage.run(tokenizer_stage.Config(data=str(corpus), out=root / "tokenizer", vocab_size=2048,
                                                                 pattern=pattern))
    shape = dict(vocab_size=2048, block_size=256, n_layer=4, n_head=8, n_embd=256)
    if family == "gpt2":
        config = ModelConfig.gpt2(**shape)
    else:  # mixtral: the llama layout with 4 experts of 256 units, 2 per token (GGUF's ffn_*_exps)
        moe = {"moe_experts": 4, "moe_top_k": 2} if family == "mixtral" else {}
        config = ModelConfig.llama(**shape, n_kv_head=2, intermediate_size=512 // (2 if moe else 1),
                                   rope_theta=50000.0, **moe)
    torch.manual_seed(0)
    model = Transformer(config)
    with torch.no_grad():  # norms and biases away from 1 and 0, so a mismapped one shows
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return save_model_dir(root / "model", model, tokenizer_file=tokenizer, stage="benchmark", config={})


def default_llama_python() -> str:
    try:
        import llama_cpp  # noqa: F401

        return sys.executable
    except ImportError:
        return "/tmp/llcpp/bin/python"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="model dir to export (default: a small random model)")
    parser.add_argument("--family", choices=("llama", "gpt2", "mixtral"), default="llama")
    parser.add_argument("--pattern", choices=("gpt4", "gpt2", "digits"), default="gpt4",
                        help="the small model's tokenizer split (llama.cpp pre-tokenizers llama-bpe, gpt-2, qwen2)")
    parser.add_argument("--dtypes", default="f32,f16,q8_0")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--llama-python", default=None, help="python with llama_cpp installed")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, repeats=args.repeats)
        return

    import torch

    from groundup.interop.gguf import export_gguf, model_from_gguf_state, read_gguf
    from groundup.model.io import load_model_dir

    torch.set_num_threads(1)  # llama.cpp runs with one thread too
    llama_python = args.llama_python or default_llama_python()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.model or small_model_dir(tmp, args.family, args.pattern)
        model, tokenizer = load_model_dir(model_dir)
        ours_ids = [tokenizer.encode(p)[: model.config.block_size] for p in PROMPTS]
        ours_logits, ours_seconds = [], []
        with torch.no_grad():
            for ids in ours_ids:
                idx = torch.tensor([ids])
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    logits = model(idx)[0]
                    times.append(time.perf_counter() - start)
                ours_logits.append(logits.numpy())
                ours_seconds.append(sorted(times)[len(times) // 2])
        (tmp / "prompts.json").write_text(json.dumps(PROMPTS), encoding="utf-8")
        n_tokens = sum(len(i) for i in ours_ids)
        print(f"model {model_dir} ({model.config.family}, {model.num_parameters() / 1e6:.1f}M parameters), "
              f"{len(PROMPTS)} prompts, {n_tokens} tokens; llama.cpp from {llama_python}")
        header = (f"{'gguf':6} {'ids equal':>9} {'max |dlogit|':>12} {'relative':>9} {'argmax agree':>12} "
                  f"{'read back':>9} {'llama.cpp tok/s':>15} {'groundup tok/s':>14} {'ratio':>6}")
        print(header)
        print("-" * len(header))
        for dtype in args.dtypes.split(","):
            path = export_gguf(model_dir, tmp / f"model-{dtype}.gguf", dtype=dtype)
            out = tmp / f"llamacpp-{dtype}.npz"
            subprocess.run([llama_python, __file__, "--child", str(path), str(tmp / "prompts.json"), str(out),
                            "--repeats", str(args.repeats)], check=True)
            theirs = np.load(out)
            _, tensors = read_gguf(path)
            read_back = model_from_gguf_state({k: torch.from_numpy(v) for k, v in tensors.items()}, model.config)
            ids_equal = all(theirs[f"ids_{i}"].tolist()[: len(ids)] == ids for i, ids in enumerate(ours_ids))
            worst, worst_read_back, scale, agree, total = 0.0, 0.0, 0.0, 0, 0
            for i, ids in enumerate(ours_ids):
                if theirs[f"ids_{i}"].tolist()[: len(ids)] != ids:
                    continue  # logits of different token sequences are not comparable
                ref, got = ours_logits[i], theirs[f"logits_{i}"][: len(ids), : ours_logits[i].shape[-1]]
                worst = max(worst, float(np.abs(ref - got).max()))
                with torch.no_grad():
                    file_logits = read_back(torch.tensor([ids]))[0].numpy()
                worst_read_back = max(worst_read_back, float(np.abs(file_logits - got).max()))
                scale = max(scale, float(np.abs(ref).max()))
                agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
                total += len(ids)
            llama_tps = n_tokens / float(theirs["seconds"].sum())
            ours_tps = n_tokens / sum(ours_seconds)
            row = {"gguf": dtype, "ids_equal": ids_equal, "max_abs_logit_diff": worst,
                   "relative_logit_diff": worst / max(scale, 1.0), "argmax_agree": f"{agree}/{total}",
                   "max_abs_logit_diff_read_back": worst_read_back,
                   "llamacpp_tokens_per_s": llama_tps, "groundup_tokens_per_s": ours_tps,
                   "ratio_llamacpp_over_groundup": llama_tps / ours_tps}
            results.append(row)
            print(f"{dtype:6} {str(ids_equal):>9} {worst:12.3g} {row['relative_logit_diff']:9.3g} "
                  f"{row['argmax_agree']:>12} {worst_read_back:9.3g} {llama_tps:15.0f} {ours_tps:14.0f} {row['ratio_llamacpp_over_groundup']:6.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
