"""`groundup finetune METHOD [flags]`: one command, one module per method, each with its own Config."""

from __future__ import annotations

import importlib
import sys

METHODS: dict[str, tuple[str, str]] = {
    "sft": ("groundup.finetune.sft", "Instruction fine-tuning on chat or Alpaca JSONL (loss on answers only)."),
    "classify": ("groundup.finetune.classify", "Fine-tune a classifier (n-class head on the last token) on text,label JSONL."),
    "dpo": ("groundup.finetune.dpo", "Direct preference optimization on prompt,chosen,rejected JSONL."),
    "continue": ("groundup.finetune.continued", "Continued pretraining of a model dir on new token shards."),
}


def usage() -> str:
    width = max(map(len, METHODS))
    lines = ["usage: groundup finetune <method> [--config FILE] [--key value ...]", "", "methods:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in METHODS.items()]
    lines += ["", "Every method takes --lora.enabled true to train LoRA adapters on a frozen base instead of every weight.",
              "`groundup finetune <method> --help` lists its settings."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    method, rest = argv[0], argv[1:]
    if method not in METHODS:
        print(f"groundup finetune: unknown method {method!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from groundup import config

    module = importlib.import_module(METHODS[method][0])
    cfg = config.parse(module.Config, rest, prog=f"groundup finetune {method}")
    module.run(cfg)
    return 0
