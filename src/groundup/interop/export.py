"""The ``groundup export`` stage: a model dir -> a Hugging Face transformers folder or a GGUF file.

``--format hf`` writes a folder ``AutoModelForCausalLM`` / ``AutoTokenizer`` (and vLLM) load with no custom
code; ``--format gguf`` writes ``model.gguf`` and an ollama ``Modelfile`` for llama.cpp and ollama.
``--verify`` loads the export back (transformers, or the gguf reader) and compares logits on a few
prompts; a difference raises :class:`groundup.interop.VerificationError` (``groundup export`` exits 1).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from groundup import config as configlib

VERIFY_TEXTS = [
    "def mean(xs):\n    return sum(xs) / len(xs)  # average\n",
    "The quick brown fox jumps over the lazy dog. It's 3.14, isn't it?",
    "中文字符测试，日本語のテキスト。",
    "Emoji 👍🏽 and 🇫🇷,   runs of   spaces\t\tand\n\n\nnewlines",
]
"""Prompts --verify compares logits on (code, English, CJK, emoji, whitespace runs)."""

_HF_DTYPES = {"float32": "float32", "fp32": "float32", "f32": "float32", "float16": "float16", "fp16": "float16",
              "f16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}
_GGUF_DTYPES = {"f32": "f32", "float32": "f32", "fp32": "f32", "f16": "f16", "float16": "f16", "fp16": "f16",
                "q8_0": "q8_0", "q4_0": "q4_0", "q4_k_m": "q4_k_m"}


@dataclass(kw_only=True)
class Config:
    """Export a model dir to a Hugging Face transformers folder or a GGUF file (llama.cpp, ollama)."""

    model: Path = Path("runs/tiny/model")
    """Model dir to export."""
    out: Path = Path("exported")
    """Output: the HF folder; for GGUF a folder (model.gguf + Modelfile) or a path ending in .gguf."""
    format: Literal["hf", "gguf"] = field(default="hf", metadata=configlib.aliases("--to"))
    """'hf' (GPT2LMHeadModel / LlamaForCausalLM folder) or 'gguf' (llama.cpp / ollama)."""
    dtype: str | None = None
    """Weight type: hf float32 (default) | float16 | bfloat16; gguf f32 | f16 (default) | q8_0 | q4_0 |
    q4_k_m (llama.cpp's Q4_K_M mix)."""
    max_shard_size: str = "5GB"
    """HF: largest safetensors file; bigger models are sharded with model.safetensors.index.json."""
    tokenizer_pre: str | None = None
    """GGUF: llama.cpp pre-tokenizer name to write when the split regex is not one groundup names."""
    verify: bool = False
    """Load the export back and compare logits (and the tokenizer) on a few prompts; fail if they differ."""
    tolerance: float | None = None
    """Largest logit difference --verify accepts (default 1e-4 for float32; HF 16-bit 1e-3; GGUF f16/q8_0/q4_0/
    q4_k_m: relative to the largest logit, 2e-2 / 2e-1 / 1 / 1)."""
    verify_texts: list[str] = field(default_factory=lambda: list(VERIFY_TEXTS))
    """Prompts --verify runs."""
    overwrite: bool = False
    """Write into a non-empty `out` (or over a file) that is not an earlier export (entries with the export's
    names are replaced, nothing else is removed; `out` may never hold or lie inside the model dir)."""


def resolve_dtype(fmt: str, dtype: str | None) -> str:
    table, default = (_HF_DTYPES, "float32") if fmt == "hf" else (_GGUF_DTYPES, "f16")
    if dtype is None:
        return default
    if dtype.lower() not in table:
        raise ValueError(f"dtype {dtype!r} is not available for {fmt} export; choose one of "
                         f"{', '.join(sorted(set(table.values())))}")
    return table[dtype.lower()]


def modelfile_target(folder: Path) -> str | None:
    """The GGUF an export's ollama ``Modelfile`` in ``folder`` loads (its first line, ``FROM ./NAME.gguf``)."""
    try:
        with open(folder / "Modelfile", encoding="utf-8") as f:
            first = f.readline().strip()
    except (OSError, UnicodeDecodeError):
        return None
    name = first.removeprefix("FROM ./")
    return name if first.startswith("FROM ./") and name.endswith(".gguf") and "/" not in name else None


def prepare_export_out(cfg: Config) -> bool:
    """:func:`groundup.artifacts.prepare_out` for the export's folder, or for a ``.gguf`` file and the ollama
    ``Modelfile`` beside it. True when ``out`` is an earlier export."""
    from groundup.artifacts import prepare_out

    if cfg.format == "gguf" and Path(cfg.out).suffix == ".gguf":
        gguf = Path(cfg.out)
        previous = prepare_out(gguf, stage="export", inputs=[cfg.model], overwrite=cfg.overwrite,
                               written_by=lambda path: modelfile_target(path.parent) == path.name)
        prepare_out(gguf.parent / "Modelfile", stage="export", inputs=[cfg.model], overwrite=cfg.overwrite,
                    written_by=lambda path: modelfile_target(path.parent) is not None)
        return previous
    unfinished = ("model.gguf", "Modelfile", ".model.gguf.tmp") if cfg.format == "gguf" else ()
    return prepare_out(cfg.out, stage="export", inputs=[cfg.model], overwrite=cfg.overwrite, unfinished=unfinished)


def run(cfg: Config) -> Path:
    """Write the export; with ``verify``, read it back and compare. Returns the folder or the .gguf file."""
    dtype = resolve_dtype(cfg.format, cfg.dtype)
    model_dir = Path(cfg.model)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model dir not found: {model_dir}")
    previous = prepare_export_out(cfg)
    if cfg.format == "hf":
        from groundup.interop.hf import export_hf, verify_hf

        out = export_hf(model_dir, cfg.out, dtype=dtype, max_shard_size=cfg.max_shard_size, previous=previous)
        print(f"wrote Hugging Face folder {out}", file=sys.stderr)
        if cfg.verify:
            tolerance = cfg.tolerance if cfg.tolerance is not None else (1e-4 if dtype == "float32" else 1e-3)
            diff = verify_hf(model_dir, out, texts=cfg.verify_texts, dtype=dtype, tolerance=tolerance)
            print(f"verify: transformers logits match groundup's, max abs diff {diff:.3g} "
                  f"(tolerance {tolerance:g}); tokenizer ids identical", file=sys.stderr)
        return out
    if cfg.format == "gguf":
        from groundup.interop.gguf import export_gguf, verify_gguf

        path = export_gguf(model_dir, cfg.out, dtype=dtype, tokenizer_pre=cfg.tokenizer_pre)
        print(f"wrote {path} and {path.parent / 'Modelfile'}", file=sys.stderr)
        if cfg.verify:
            result = verify_gguf(model_dir, path, texts=cfg.verify_texts, dtype=dtype, tolerance=cfg.tolerance)
            print(f"verify: every tensor reads back as written (max diff {result['max_tensor_diff']:.3g}); "
                  f"logits of the model read back vs groundup's: max abs diff {result['max_logit_diff']:.3g} "
                  f"({result['relative_logit_diff']:.3g} of the largest)",
                  file=sys.stderr)
        return path
    raise ValueError(f"format must be 'hf' or 'gguf', got {cfg.format!r}")
