"""How good a tokenizer is: compression, fertility and the round-trip checks, as plain functions.

Every function takes a :class:`~groundup.tokenizer.Tokenizer` and text and returns numbers;
``groundup tokenizer`` gathers them into ``stats.json``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from groundup.tokenizer import Tokenizer

CJK_RANGE = (0x4E00, 0x9FFF)
"""CJK Unified Ideographs (the zh characters of the round-trip check)."""
THAI_RANGE = (0x0E00, 0x0E7F)

_WORD = re.compile(r"[^\W\d_]+")  # a run of letters: what "continued word" is measured on


def compression(tokenizer: Tokenizer, texts: Sequence[str]) -> dict[str, Any]:
    """Bytes per token and fertility (tokens per whitespace-separated word) over ``texts``."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_words = sum(len(t.split()) for t in texts)
    n_tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    return {
        "documents": len(texts),
        "bytes": n_bytes,
        "words": n_words,
        "tokens": n_tokens,
        "bytes_per_token": n_bytes / n_tokens if n_tokens else None,
        "tokens_per_word": n_tokens / n_words if n_words else None,
    }


def continued_words(tokenizer: Tokenizer, texts: Sequence[str], max_words: int = 20_000) -> dict[str, Any]:
    """Share of words (letter runs, each with its leading space) that take more than one token.

    The first ``max_words`` words in order, so the figure is deterministic and cheap.
    """
    words = []
    for text in texts:
        words.extend(" " + w for w in _WORD.findall(text)[: max_words - len(words)])
        if len(words) >= max_words:
            break
    if not words:
        return {"words": 0, "continued_share": None}
    continued = sum(len(ids) > 1 for ids in tokenizer.encode_batch(words))
    return {"words": len(words), "continued_share": continued / len(words)}


def round_trips(tokenizer: Tokenizer, texts: Sequence[str]) -> int:
    """How many of ``texts`` decode back to exactly themselves."""
    return sum(tokenizer.decode(ids) == text for ids, text in zip(tokenizer.encode_batch(texts), texts, strict=True))


def whitespace_cases() -> list[str]:
    """Runs of spaces, tabs, newlines (and their mixtures) of many lengths, alone and between words."""
    units = [" ", "\t", "\n", "\r\n", " \n", "\t ", "\u00a0", "\u3000", " \t\n"]
    cases = []
    for unit in units:
        for n in (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 100):
            run = unit * n
            cases += [run, f"a{run}b", f"{run}x", f"x{run}", f"def f():{run}return 1"]
    return cases


def whitespace_check(tokenizer: Tokenizer) -> dict[str, Any]:
    cases = whitespace_cases()
    ok = round_trips(tokenizer, cases)
    return {"cases": len(cases), "round_trip": ok, "exact": ok == len(cases),
            "tokens_for_4_spaces": len(tokenizer.encode("    ")),
            "tokens_for_8_spaces": len(tokenizer.encode("        "))}


def digit_runs(tokenizer: Tokenizer, text: str) -> list[str]:
    """The digit strings of each token of ``text`` (tokens holding no digit are left out)."""
    pieces = [tokenizer.decode_bytes([i]).decode("utf-8", errors="replace") for i in tokenizer.encode(text)]
    return [p for p in pieces if any(c.isdigit() for c in p)]


def digit_check(tokenizer: Tokenizer) -> dict[str, Any]:
    """Round trip of numbers, and how digit strings split: one digit per token, or groups of at most 3."""
    cases = [str(n) for n in range(1000)] + [
        "1234567890", "0" * 20, "9" * 33, "3.14159265358979", "1,000,000", "2024-01-01", "0x7fffffff",
        "1e-10", "v1.2.3", "١٢٣٤٥", "１２３", "x = 42\ny = 1234567\n",
    ]
    ok = round_trips(tokenizer, cases)
    # The longest digit group one token holds, over digit strings of 1 to 13 digits.
    probes = ["1234567890123"[:k] for k in range(1, 14)] + ["0" * 12, "9" * 13]
    longest = max(len(run) for p in probes for run in digit_runs(tokenizer, p))
    split = "individual" if longest == 1 else "grouped<=3" if longest <= 3 else f"grouped<={longest}"
    return {"cases": len(cases), "round_trip": ok, "exact": ok == len(cases), "max_digits_per_token": longest,
            "split": split, "example": {"1234567890": digit_runs(tokenizer, "1234567890")}}


def script_check(tokenizer: Tokenizer, first: int, last: int) -> dict[str, Any]:
    """For every assigned character in [first, last]: does it round-trip alone, is it one token, tokens per char."""
    chars = [chr(c) for c in range(first, last + 1) if unicodedata.category(chr(c)) != "Cn"]
    encoded = tokenizer.encode_batch(chars)
    ok = sum(tokenizer.decode(ids) == c for ids, c in zip(encoded, chars, strict=True))
    n_tokens = sum(len(ids) for ids in encoded)
    return {"range": f"U+{first:04X}-U+{last:04X}", "characters": len(chars),
            "round_trip": ok, "round_trip_share": ok / len(chars),
            "single_token_share": sum(len(ids) == 1 for ids in encoded) / len(chars),
            "tokens_per_character": n_tokens / len(chars)}


def backends_agree(tokenizer: Tokenizer, texts: Sequence[str]) -> bool:
    """Whether the encoder in use gives exactly the ids that ``tokenizers`` gives on ``texts``."""
    reference = tokenizer.hf.encode_batch_fast(list(texts), add_special_tokens=False)
    return all(ids == ref.ids for ids, ref in zip(tokenizer.encode_batch(texts), reference, strict=True))


def tokenizer_stats(tokenizer: Tokenizer, held_out: Sequence[str]) -> dict[str, Any]:
    """Everything ``stats.json`` reports, measured on the held-out texts (never trained on)."""
    held = compression(tokenizer, held_out)
    exact = round_trips(tokenizer, held_out)
    return {
        "vocab_size": tokenizer.vocab_size,
        "special_tokens": tokenizer.special_tokens,
        "held_out": {
            **held,
            "continued_words": continued_words(tokenizer, held_out),
            "round_trip_documents": exact,
            "round_trip_exact": exact == len(held_out),
        },
        "whitespace": whitespace_check(tokenizer),
        "digits": digit_check(tokenizer),
        "cjk": script_check(tokenizer, *CJK_RANGE),
        "thai": script_check(tokenizer, *THAI_RANGE),
        "encoder": {"backend": tokenizer.backend, "identical_to_tokenizers": backends_agree(tokenizer, held_out)},
    }
