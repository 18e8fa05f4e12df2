"""Held-out quality of the two quality scorers on the same annotations: hashed n-grams (a) and a model's head (b).

The annotations are the test suite's: documents of filler words holding 0-5 of five "educational" words,
scored by a fake OpenAI-compatible annotator as the number of distinct ones present (``tests/curate``).
``groundup train-scorer`` learns them twice on the same split (held-out share by text hash): the hashed
word n-gram linear model (``--kind ngram``) and a regression head on a groundup model's mean-pooled hidden
states (``--kind model``). The base model is ``--base`` (a pretrained model dir, e.g. ``groundup run``'s
``model/``), or else a tiny random-init one (1 layer, width 32) over a tokenizer trained on the documents.
Prints F1, precision and recall of ``score >= 3`` and the confusion matrices of both; writes
benchmarks/results/scorer_quality.json.

    python benchmarks/scorer_quality.py [--documents 600] [--steps 400] [--base runs/x/model]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "curate"))

from test_curate_annotate import _annotated_corpus, write_docs  # noqa: E402

from groundup.curate import scorer  # noqa: E402


def random_base(texts: list[str], out: Path) -> Path:
    import torch

    from groundup.model.config import ModelConfig
    from groundup.model.io import save_model_dir
    from groundup.model.transformer import Transformer
    from groundup.tokenizer import Tokenizer
    from groundup.tokenizer import run as tokenizer_stage

    corpus = write_docs(out / "corpus.jsonl", texts)
    tokenizer = tokenizer_stage.run(tokenizer_stage.Config(data=str(corpus), out=out / "tokenizer", vocab_size=600))
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny-llama", n_layer=1, n_embd=32, n_head=4, n_kv_head=2,
                                              vocab_size=Tokenizer.from_file(tokenizer).vocab_size, block_size=160))
    return save_model_dir(out / "base", model, tokenizer_file=tokenizer, stage="random-base", config={})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=600, help="annotated documents (the test suite's 600)")
    parser.add_argument("--steps", type=int, default=400, help="fine-tuning steps of the model's head")
    parser.add_argument("--lr", type=float, default=3e-3, help="fine-tuning learning rate")
    parser.add_argument("--base", type=Path, default=None, help="base model dir (default: a tiny random-init one)")
    parser.add_argument("--device", default="cpu", help="fine-tuning device")
    args = parser.parse_args()
    results: dict = {"documents": args.documents}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ann, texts = _annotated_corpus(tmp, args.documents)
        t0 = time.perf_counter()
        ngram = scorer.run(scorer.Config(annotations=[str(ann)], out=tmp / "ngram", threshold=3))
        results["ngram"] = {**json.loads((ngram / "metrics.json").read_text()),
                            "seconds": round(time.perf_counter() - t0, 1)}
        base = args.base or random_base(texts, tmp)
        flags = ["--train.max_steps", str(args.steps), "--optim.lr", str(args.lr), "--optim.warmup_steps", "20",
                 "--batch_size", "16", "--device", args.device, "--train.eval_every", "0",
                 "--train.checkpoint_every", "0", "--train.progress_bar", "false", "--train.log_every", "100"]
        t0 = time.perf_counter()
        model = scorer.run(scorer.Config(annotations=[str(ann)], out=tmp / "model", threshold=3, kind="model",
                                         model=base, finetune_args=flags))
        results["model"] = {**json.loads((model / "metrics.json").read_text()),
                            "base": str(args.base) if args.base else "tiny random-init (1 layer, width 32)",
                            "steps": args.steps, "seconds": round(time.perf_counter() - t0, 1)}
    print(f"{'scorer':10}{'F1':>8}{'precision':>11}{'recall':>8}{'MAE':>7}   confusion (tp fp fn tn)   seconds")
    for name in ("ngram", "model"):
        r = results[name]
        c = r["confusion"]
        print(f"{name:10}{r['f1']:>8}{r['precision']:>11}{r['recall']:>8}{r['mean_absolute_error']:>7}   "
              f"{c['true_positive']:>4} {c['false_positive']:>3} {c['false_negative']:>3} {c['true_negative']:>3}"
              f"{'':14}{r['seconds']}")
    print(f"held out: {results['ngram']['held_out_documents']} of {args.documents} documents; "
          f"model base: {results['model']['base']}, {args.steps} steps")
    out = Path(__file__).parent / "results" / "scorer_quality.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
