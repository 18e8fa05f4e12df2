"""The ``groundup`` command: maps each sub-command to a stage's ``Config`` and ``run()``; nothing else.

``main`` is the command for Python callers (a stage's error propagates); ``console``, the installed
``groundup`` script, turns an error into one line and an exit status.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from groundup import config
from groundup.interop import VerificationError

# sub-command -> (module holding `Config` and `run`, one line of help). Modules import lazily so that
# `groundup --help` and light stages start fast. A stage's module is named after its command, in the package
# that does its work (train/pretrain.py, infer/generate.py); where the package bears the command's name, it is
# the package's run.py (plan/run.py, curate/run.py, finetune/run.py); `run` itself is groundup/run.py. Two
# commands are Python keywords and are spelled out: `import` is interop/importer.py, finetune's `continue`
# finetune/continued.py.
STAGES: dict[str, tuple[str, str]] = {
    "plan": ("groundup.plan.run", "Plan a model: parameters, FLOPs, memory, time, cost and inference speed."),
    "probe": ("groundup.probe.run", "Measure this machine: matmul peaks, memory bandwidth, disk reads, collectives, topology."),
    "launch": ("groundup.probe.launch", "Write (and submit) a Slurm script running a stage under torchrun on N nodes."),
    "curate": ("groundup.curate.run", "Clean, filter, deduplicate and redact web text (WARC/WET, JSONL, Parquet) into shards."),
    "annotate": ("groundup.curate.annotate", "Score documents 0-5 with an LLM behind an OpenAI-compatible URL (FineWeb-Edu's rubric)."),
    "train-scorer": ("groundup.curate.scorer", "Learn a fast quality scorer (hashed n-gram linear model) from annotations."),
    "cc-fetch": ("groundup.curate.ccindex", "Choose Common Crawl records from CDX index shards and fetch them by HTTP Range into WARC files."),
    "synth": ("groundup.curate.synth", "Generate instructions, Q&A or textbook passages through an OpenAI-compatible URL, deduplicated and filtered."),
    "run": ("groundup.run", "Run every stage of a recipe in order (default: the tiny recipe on the embedded corpus)."),
    "tokenizer": ("groundup.tokenizer.run", "Train a byte-level BPE tokenizer."),
    "tokenize": ("groundup.tokens.tokenize", "Turn text into train.bin / val.bin token shards."),
    "pretrain": ("groundup.train.pretrain", "Pretrain a model on token shards."),
    "consolidate": ("groundup.train.consolidate", "Turn a training checkpoint (distributed or not) into a model dir."),
    "generate": ("groundup.infer.generate", "Generate text from a model dir."),
    "export": ("groundup.interop.export", "Export a model dir to a Hugging Face folder or a GGUF file (llama.cpp, ollama)."),
    "import": ("groundup.interop.importer", "Import a local Hugging Face folder (GPT-2, Llama, Mistral, Qwen2/3, Mixtral, OLMoE, Qwen2-MoE) as a model dir."),
    "evaluate": ("groundup.evaluate.run", "Evaluate a model dir on local task files (perplexity, multiple choice, generation, code)."),
    "lm-eval": ("groundup.evaluate.lm_eval", "lm-evaluation-harness's own command line with groundup models registered (--model groundup)."),
    "finetune": ("groundup.finetune.run", "Fine-tune a model dir: sft, classify, dpo or continue (LoRA with any)."),
    "quantize": ("groundup.infer.quantize", "Quantize a model dir's weights to int8 or int4 for faster CPU decoding."),
    "classify": ("groundup.infer.classify", "Label texts with a classifier dir (from `groundup finetune classify`)."),
    "serve": ("groundup.serve.run", "Serve a model dir over an OpenAI-compatible HTTP API (continuous batching, streaming, structured output)."),
    "chat": ("groundup.serve.chat", "Chat with a model dir in the terminal (history, chat template, streaming)."),
    "agent": ("groundup.apps.run", "Run an agent on one task: a model (URL or model dir), Python tools, MCP servers' tools."),
    "mcp-serve": ("groundup.apps.mcp_server", "Serve groundup's capabilities (plan, evaluate, generate, count tokens) as MCP tools."),
    "report": ("groundup.report.run", "Write one HTML page with plots of every stage of a run (or several runs overlaid)."),
}

NOTES = """\
`groundup <stage> --help` lists every setting of a stage with its meaning and default; every setting
is a flag (--optim.lr 3e-4, dashes or underscores) and a key of the YAML file given by --config.
--debug and --log-level go before the stage name. An error prints one line and exits non-zero
(2: a bad command line, 1: the stage failed, 130: interrupted); --debug (or GROUNDUP_DEBUG=1)
shows its traceback."""

LOG_LEVELS = ("debug", "info", "warning", "error")


class _Debug(argparse.Action):
    """``--debug``: the same as GROUNDUP_DEBUG=1, set as soon as it is read (an error while reading the
    rest of the command line shows its traceback too), and inherited by the processes a stage starts."""

    def __init__(self, **kwargs) -> None:
        super().__init__(nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        os.environ["GROUNDUP_DEBUG"] = "1"
        namespace[self.dest] = True


def debugging() -> bool:
    return os.environ.get("GROUNDUP_DEBUG", "").lower() not in ("", "0", "false", "no")


def build_parser(path: config.CommandPath) -> config.Parser:
    """``groundup``'s parser; ``path`` is filled in with the stage the command line names."""
    from groundup import __version__

    parser = config.Parser(prog="groundup", description="Develop a language model from scratch: plan, curate, "
                           "tokenize, pretrain, fine-tune, evaluate, serve, export.", epilog=NOTES)
    parser.add_argument("-V", "--version", action="version", version=__version__)
    parser.add_argument("--log-level", "--log_level", dest="log_level", choices=LOG_LEVELS, default="info",
                        help="Messages at this level and above go to stderr.")
    parser.add_argument("--debug", action=_Debug, help="Show the traceback of an error (or GROUNDUP_DEBUG=1).")
    config.add_commands(parser, STAGES, "stage", path)
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def main(argv: list[str] | None = None, path: config.CommandPath | None = None) -> int:
    """Run the command line ``argv``; returns the exit status (an error the stage raises propagates).
    ``path``, if given, tells the caller which stage the command line named."""
    path = config.CommandPath() if path is None else path
    parser = build_parser(path)
    try:
        namespace = parser.parse_args(argv)
    except SystemExit as e:
        if path.module is not None:  # a stage's own --help, or a bad flag of a stage
            raise
        return e.code if isinstance(e.code, int) else 0  # the list of stages or of methods, or a name not in it
    if path.module is None:  # no stage named, or a command with methods and no method named
        sub = parser
        for name in path.names:
            sub = sub._subcommands_action._name_parser_map[name]
        sub.print_help()
        return 0
    configure_logging(namespace.log_level)
    cfg = path.config(namespace)
    try:
        path.module.run(cfg)
    except VerificationError as e:  # the stage's output exists; the check of it failed
        print(f"groundup {' '.join(path.names)}: verification failed: {e}", file=sys.stderr)
        return 1
    return 0


def describe(error: BaseException) -> str:
    """One line naming what failed and where: the error's own message, with its type where that message
    alone says little (a KeyError's key, an internal error)."""
    message = config.one_line(str(error))
    if isinstance(error, (OSError, ValueError, ImportError)) and message:
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def console(argv: list[str] | None = None) -> int:
    """The ``groundup`` script: ``main`` with each error as one line and an exit status."""
    path = config.CommandPath()
    try:
        return main(argv, path)
    except KeyboardInterrupt:
        if debugging():
            raise
        print(f"{' '.join(['groundup', *path.names])}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 (the one place every error becomes one line)
        if debugging():
            raise
        print(f"{' '.join(['groundup', *path.names])}: error: {describe(e)} "
              f"(groundup --debug ... shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(console())
