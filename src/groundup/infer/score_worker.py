"""A regression head's scores over pipes: the process a torch-free caller (curation's ``score`` step) starts.

``python -m groundup.infer.score_worker CLASSIFIER_DIR [--device cpu] [--threads N] [--batch-size B]`` loads
a classifier dir with a regression head (``groundup finetune classify --task regression``), writes one line,
``{"ready": true, "pooling": ..., "max_len": ...}``, then answers each line ``{"texts": [...]}`` read on stdin
with one line ``{"scores": [...]}`` on stdout (a line it cannot handle gets ``{"error": "..."}``), until stdin
closes. The caller stays free of torch and of the model code; the worker dies with its stdin.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a classifier dir with a regression head")
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'cuda:N' ('auto': CUDA when available)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    args = parser.parse_args(argv)
    out = sys.stdout  # the replies' channel: anything else printed goes to stderr
    sys.stdout = sys.stderr

    import torch

    from groundup.infer.classify import predict_scores
    from groundup.model.classifier import CLASSIFIER_FILE, load_classifier_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        meta_file = Path(args.model) / CLASSIFIER_FILE
        task = json.loads(meta_file.read_text()).get("task", "classes") if meta_file.is_file() else None
        if task != "regression":  # checked first: a class head's weights would load, and score nonsense
            raise ValueError(f"{args.model}: not a regression head (classifier.json task: {task!r}); "
                             f"train one with `groundup finetune classify --task regression`")
        model, tokenizer, meta = load_classifier_dir(args.model, device=device)
    except Exception as e:  # noqa: BLE001 - any failure to load is reported to the caller in one line
        out.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        out.flush()
        return 1
    out.write(json.dumps({"ready": True, "pooling": meta.get("pooling"), "max_len": meta["max_len"]}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            texts = json.loads(line)["texts"]
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise ValueError("'texts' must be a list of strings")
            reply = {"scores": predict_scores(model, tokenizer, meta, texts, args.batch_size)}
        except Exception as e:  # noqa: BLE001 - a bad batch is answered with its error; the worker goes on
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
