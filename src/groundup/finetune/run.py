"""`groundup finetune METHOD [flags]`: one command, one module per method, each with its own Config.

The command line lists ``METHODS`` as sub-commands of ``groundup finetune`` (see :mod:`groundup.cli`)."""

from __future__ import annotations

METHODS: dict[str, tuple[str, str]] = {
    "sft": ("groundup.finetune.sft", "Instruction fine-tuning on chat or Alpaca JSONL (loss on answers only)."),
    "classify": ("groundup.finetune.classify", "Fine-tune a classifier (n-class head on the last token) on text,label JSONL."),
    "dpo": ("groundup.finetune.dpo", "Direct preference optimization on prompt,chosen,rejected JSONL."),
    "grpo": ("groundup.finetune.grpo", "Reinforcement learning with verifiable rewards (GRPO) on prompts JSONL."),
    "continue": ("groundup.finetune.continued", "Continued pretraining of a model dir on new token shards."),
}


NOTES = ["Every method takes --lora.enabled true to train LoRA adapters on a frozen base instead of every weight.",
         "`groundup finetune <method> --help` lists its settings."]
