"""GGUF q4_k_m: groundup's export against llama.cpp's own quantizer on the same weights.

The model dir is exported with `groundup export --to gguf` at f32 and at q4_k_m; llama.cpp's
``llama-quantize`` makes its own Q4_K_M from the f32 file. The script compares

- the type of every tensor (groundup's q4_k_m mix against llama.cpp's choice) and whether each tensor's
  bytes are identical (groundup's Q4_K/Q6_K quantizers follow ggml's reference code, the path
  ``llama-quantize`` takes without an importance matrix);
- the file sizes and the time each side took to quantize;
- perplexity by ``llama-perplexity`` on held-out text (the embedded corpus's held-out documents, the
  files pretraining never saw) for f32, groundup's q4_k_m and llama.cpp's Q4_K_M;
- groundup's k-quantizers' speed on one large matrix (``--speed-shape``; rows must be a multiple of 256
  values, so a 151936 x 896 embedding is never a k-quant: llama.cpp's recipe stores it Q8_0 tied, Q5_0
  untied).

``--shape qwen2.5-0.5b`` exports random weights in Qwen2.5-0.5B's layout instead (made as
``decode_llamacpp.py`` makes them, kept in ``--work``): the types, bytes and the time of a whole 0.5B
export, without perplexity (random weights have none worth measuring).

    python benchmarks/gguf_kquants.py --llama-bin ~/llama.cpp/build/bin [--model runs/tiny/model]
        [--threads 2] [--max-bytes 100000] [--speed-shape 151936x1024] [--json out.json]
    python benchmarks/gguf_kquants.py --llama-bin ~/llama.cpp/build/bin --shape qwen2.5-0.5b --speed-shape ''

``--llama-bin`` is the folder holding ``llama-quantize`` and ``llama-perplexity`` (``cmake -B build &&
cmake --build build``). Prints tables and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def held_out_text(max_bytes: int) -> str:
    """The embedded corpus's held-out documents (pretraining's default split), up to ``max_bytes``."""
    from groundup.corpus import split_documents

    _, held_out = split_documents()
    text = "\n\n".join(doc.text for doc in held_out)
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def perplexity(llama_bin: Path, gguf: Path, text_file: Path, ctx: int, threads: int) -> float:
    """llama-perplexity's final estimate (each chunk of ``ctx`` tokens scores its second half)."""
    out = subprocess.run([str(llama_bin / "llama-perplexity"), "-m", str(gguf), "-f", str(text_file),
                          "-c", str(ctx), "-b", str(ctx), "-t", str(threads)],
                         capture_output=True, text=True, check=True)
    match = re.search(r"Final estimate: PPL = ([0-9.]+)", out.stdout + out.stderr)
    # Its log can lose the last line on exit; the running estimate after the last chunk is the same number.
    running = re.findall(r"\[\d+\]([0-9.]+),", out.stdout)
    if match is None and not running:
        raise RuntimeError(f"llama-perplexity printed no estimate for {gguf}:\n{out.stderr[-2000:]}")
    return float(match.group(1) if match else running[-1])


def tensor_table(ours: Path, theirs: Path) -> list[dict]:
    """Per tensor: groundup's type, llama.cpp's type, and whether the stored bytes are identical."""
    import gguf

    theirs_by_name = {t.name: t for t in gguf.GGUFReader(str(theirs)).tensors}
    rows = []
    for t in gguf.GGUFReader(str(ours)).tensors:
        other = theirs_by_name.get(t.name)
        same = other is not None and other.tensor_type == t.tensor_type and \
            np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(other.data).view(np.uint8))
        rows.append({"tensor": t.name, "groundup": t.tensor_type.name,
                     "llama.cpp": other.tensor_type.name if other is not None else None, "bytes_identical": same})
    return rows


def quantizer_speed(rows: int, cols: int) -> dict[str, float]:
    """Seconds groundup's Q4_K and Q6_K quantizers take on a random (rows, cols) float32 matrix."""
    from groundup.interop import kquants

    matrix = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
    result = {}
    for name, fn in (("Q4_K", kquants.quantize_q4_k), ("Q6_K", kquants.quantize_q6_k)):
        start = time.perf_counter()
        fn(matrix)
        result[name] = time.perf_counter() - start
    return result


def export_and_quantize(model_dir: Path, llama_bin: Path, work: Path, threads: int) -> dict:
    """groundup's f32 and q4_k_m files and llama.cpp's Q4_K_M of the f32 one, with the seconds each took."""
    from groundup.interop.gguf import export_gguf

    paths = {"f32": work / "f32.gguf", "groundup q4_k_m": work / "groundup-q4_k_m.gguf",
             "llama.cpp Q4_K_M": work / "llamacpp-q4_k_m.gguf"}
    seconds = {}
    export_gguf(model_dir, paths["f32"], dtype="f32")
    start = time.perf_counter()
    export_gguf(model_dir, paths["groundup q4_k_m"], dtype="q4_k_m")
    seconds["groundup q4_k_m"] = time.perf_counter() - start  # loading the model dir included
    start = time.perf_counter()
    subprocess.run([str(llama_bin / "llama-quantize"), str(paths["f32"]), str(paths["llama.cpp Q4_K_M"]),
                    "Q4_K_M", str(threads)], capture_output=True, check=True)
    seconds["llama.cpp Q4_K_M"] = time.perf_counter() - start
    return {"paths": paths, "seconds": seconds}


def report_tensors(model_dir: Path, tensors: list[dict], verbose: bool) -> dict:
    same_type = sum(r["groundup"] == r["llama.cpp"] for r in tensors)
    same_bytes = sum(r["bytes_identical"] for r in tensors)
    print(f"{model_dir}: {len(tensors)} tensors; type as llama.cpp's: {same_type}/{len(tensors)}; "
          f"bytes identical: {same_bytes}/{len(tensors)}")
    counts: dict[str, int] = {}
    for r in tensors:
        counts[r["groundup"]] = counts.get(r["groundup"], 0) + 1
    print("groundup's types: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if verbose:
        print(f"{'tensor':28} {'groundup':>9} {'llama.cpp':>9} {'bytes':>6}")
    for r in tensors:
        differs = r["groundup"] != r["llama.cpp"] or not r["bytes_identical"]
        if (verbose and r["groundup"] != "F32") or differs:
            print(f"{r['tensor']:28} {r['groundup']:>9} {r['llama.cpp'] or '-':>9} "
                  f"{'DIFF' if differs else 'same':>6}")
    return {"tensors": tensors, "types_match": same_type, "bytes_identical": same_bytes}


def report_files(made: dict, llama_bin: Path, text_file: Path | None, ctx: int, threads: int) -> list[dict]:
    """Size, quantizing time and (with a text file) llama-perplexity of each file."""
    rows = []
    print(f"{'file':18} {'MB':>9} {'quantize s':>10} {'perplexity':>10}")
    for name, path in made["paths"].items():
        ppl = perplexity(llama_bin, path, text_file, ctx, threads) if text_file is not None else None
        row = {"file": name, "bytes": path.stat().st_size, "quantize_seconds": made["seconds"].get(name),
               "perplexity": ppl}
        rows.append(row)
        secs = f"{row['quantize_seconds']:.2f}" if row["quantize_seconds"] is not None else "-"
        print(f"{name:18} {row['bytes'] / 1e6:9.3f} {secs:>10} {ppl if ppl is not None else '-':>10}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-bin", type=Path, required=True, help="folder with llama-quantize and llama-perplexity")
    ap.add_argument("--model", type=Path, default=Path("runs/tiny/model"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-bytes", type=int, default=100_000, help="held-out text perplexity is measured on")
    ap.add_argument("--ctx", type=int, default=0, help="perplexity context (default: the model's block size)")
    ap.add_argument("--speed-shape", default="151936x1024", help="ROWSxCOLS for the quantizer timing ('' skips)")
    ap.add_argument("--shape", choices=["qwen2.5-0.5b"], default=None, help="random weights in this layout")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "groundup-decode-bench",
                    help="where --shape keeps its model dir (shared with decode_llamacpp.py)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    model_dir = args.model
    if args.shape:
        from decode_llamacpp import qwen_shape_dir  # the benchmark beside this one makes the same weights

        args.work.mkdir(parents=True, exist_ok=True)
        model_dir = qwen_shape_dir(args.work, args.model / "tokenizer.json")
    ctx = args.ctx or json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["block_size"]
    result: dict = {"model": str(model_dir), "threads": args.threads, "ctx": ctx}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        made = export_and_quantize(model_dir, args.llama_bin, work, args.threads)
        tensors = tensor_table(made["paths"]["groundup q4_k_m"], made["paths"]["llama.cpp Q4_K_M"])
        result |= report_tensors(model_dir, tensors, verbose=not args.shape)
        text_file = None
        if not args.shape:
            text_file = work / "held_out.txt"
            text_file.write_text(held_out_text(args.max_bytes), encoding="utf-8")
            print(f"\nperplexity on {text_file.stat().st_size} bytes of held-out text, ctx {ctx}, "
                  f"{args.threads} threads")
        result["files"] = report_files(made, args.llama_bin, text_file, ctx, args.threads)
    if args.speed_shape:
        r, c = (int(v) for v in args.speed_shape.lower().split("x"))
        speed = quantizer_speed(r, c)
        result["quantizer_seconds"] = {"shape": [r, c], **speed}
        print(f"\ngroundup k-quantizers on a {r} x {c} float32 matrix (one thread, numpy): " +
              ", ".join(f"{k} {v:.1f} s ({r * c / v / 1e6:.1f} M values/s)" for k, v in speed.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
