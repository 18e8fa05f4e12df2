"""The ``groundup`` command: maps each subcommand to a stage's ``Config`` and ``run()``; nothing else."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module holding `Config` and `run`, one-line help). Modules import lazily so that
# `groundup --help` and light stages start fast.
STAGES: dict[str, tuple[str, str]] = {
    "plan": ("groundup.plan.run", "Plan a model: parameters, FLOPs, memory, time, cost and inference speed."),
    "curate": ("groundup.curate.run", "Clean, filter, deduplicate and redact web text (WARC/WET, JSONL, Parquet) into shards."),
    "run": ("groundup.pipeline", "Run every stage of a recipe in order (default: the tiny recipe on the embedded corpus)."),
    "tokenizer": ("groundup.tokenizer.train", "Train a byte-level BPE tokenizer."),
    "tokenize": ("groundup.tokens.tokenize", "Turn text into train.bin / val.bin token shards."),
    "pretrain": ("groundup.train.pretrain", "Pretrain a model on token shards."),
    "consolidate": ("groundup.train.consolidate", "Turn a training checkpoint (distributed or not) into a model dir."),
    "generate": ("groundup.infer.generate", "Generate text from a model dir."),
    "export": ("groundup.interop.export", "Export a model dir to a Hugging Face folder or a GGUF file (llama.cpp, ollama)."),
    "import": ("groundup.interop.importer", "Import a local Hugging Face folder (GPT-2, Llama, Mistral, Qwen2) as a model dir."),
    "evaluate": ("groundup.evaluate.run", "Evaluate a model dir on local task files (perplexity, multiple choice, generation, code)."),
    "lm-eval": ("groundup.evaluate.harness", "lm-evaluation-harness's command line with groundup models registered (--model groundup)."),
    "finetune": ("groundup.finetune.stage", "Fine-tune a model dir: sft, classify, dpo or continue (LoRA with any)."),
    "quantize": ("groundup.infer.quantize", "Quantize a model dir's weights to int8 or int4 for faster CPU decoding."),
    "classify": ("groundup.infer.classify", "Label texts with a classifier dir (from `groundup finetune classify`)."),
    "serve": ("groundup.serve.server", "Serve a model dir over an OpenAI-compatible HTTP API (continuous batching, streaming, structured output)."),
    "chat": ("groundup.serve.chat", "Chat with a model dir in the terminal (history, chat template, streaming)."),
    "report": ("groundup.report.run", "Write one HTML page with plots of every stage of a run (or several runs overlaid)."),
}


def command_usage(prog: str, kind: str, commands: dict[str, tuple[str, str]], notes: list[str]) -> str:
    """The help text of a command with sub-commands: ``commands`` maps a name to (module, one line)."""
    width = max(len(name) for name in commands)
    lines = [f"usage: {prog} <{kind}> [--config FILE] [--key value ...]", "", f"{kind}s:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in commands.items()]
    return "\n".join(lines + ["", *notes])


def dispatch(prog: str, kind: str, commands: dict[str, tuple[str, str]], argv: list[str], notes: list[str]) -> int:
    """Run the sub-command ``argv[0]``: its module's ``main(rest)`` when it parses its own command line,
    else ``run(Config)`` with the flags parsed from ``rest``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(command_usage(prog, kind, commands, notes))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"{prog}: unknown {kind} {name!r}\n\n{command_usage(prog, kind, commands, notes)}", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[name][0])
    if hasattr(module, "main"):  # a stage with positional arguments parses its own command line
        return int(module.main(rest) or 0)
    from groundup import config

    cfg = config.parse(module.Config, rest, prog=f"{prog} {name}")
    module.run(cfg)
    return 0


NOTES = ["`groundup <stage> --help` lists every setting of a stage with its meaning and default."]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-V", "--version"):
        from groundup import __version__

        print(__version__)
        return 0
    return dispatch("groundup", "stage", STAGES, argv, NOTES)


if __name__ == "__main__":
    raise SystemExit(main())
