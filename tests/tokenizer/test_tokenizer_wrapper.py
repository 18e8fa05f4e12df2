"""The Tokenizer wrapper: lossless round trips, tiktoken == tokenizers, special tokens, errors."""

from __future__ import annotations

import json
import logging
import random

import pytest
import tokenizers

import groundup.tokenizer as tokenizer_module
from groundup.tokenizer import (
    EOS_TOKEN,
    GPT2_PATTERN,
    GPT4_PATTERN,
    PROBE_TEXTS,
    SPECIAL_TOKENS,
    Tokenizer,
    build_tiktoken,
    split_pattern_of,
    token_bytes,
)
from groundup.tokenizer import run as tokenizer_stage

# Code point ranges random text is drawn from: ASCII, Latin-1, combining marks, Greek/Cyrillic,
# Thai, CJK, Hangul, whitespace and format characters, private use, emoji and other astral planes.
RANGES = [(0x00, 0x7F), (0x80, 0xFF), (0x300, 0x36F), (0x370, 0x4FF), (0x0E00, 0x0E7F), (0x4E00, 0x9FFF),
          (0xAC00, 0xD7A3), (0x2000, 0x206F), (0xE000, 0xF8FF), (0x1F300, 0x1FAFF), (0x10000, 0x10FFFF)]
WHITESPACE = [" ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u3000", "\x0b", "\x0c", "\u2028"]


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 30)):
            if rng.random() < 0.3:
                parts.append(rng.choice(WHITESPACE) * rng.randint(1, 12))
            else:
                lo, hi = rng.choice(RANGES)
                parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8))))
        text = "".join(parts)
        # Surrogates cannot be encoded as UTF-8 (and cannot come from decoded text); drop them.
        texts.append("".join(c for c in text if not 0xD800 <= ord(c) <= 0xDFFF))
    return texts


ODD = [
    "", " ", "\n", "a", "\u0301", "\u0301\u0301\u0301", "e\u0301\u0302", "\u200d", "\ufeffBOM", "\x00nul\x00",
    "👨\u200d👩\u200d👧\u200d👦", "🇺🇳🇫🇷", "中文", "ภาษาไทย", " " * 100, "\t" * 33 + "\n" * 17,
    "1" * 50, "3.14159e-10", "'s 'S 'll 'LL 'ſ", "x\r\ny\r\n\r\n", "\U0010ffff\U000e0001",
]


def test_round_trip_random_and_odd_text(tokenizer):
    texts = random_texts(300) + ODD + list(PROBE_TEXTS)
    for text, ids in zip(texts, tokenizer.encode_batch(texts), strict=True):
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode_bytes(ids) == text.encode("utf-8")
        assert tokenizer.encode(text) == ids


def test_round_trip_held_out_documents_with_both_encoders(tokenizer, held_out_texts):
    slow = Tokenizer.from_file(tokenizer.name, fast=False)
    assert (tokenizer.backend, slow.backend) == ("tiktoken", "tokenizers")
    for text in held_out_texts + ODD:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text and slow.decode(slow.encode(text)) == text
        assert slow.encode(text) == ids


def test_tiktoken_path_matches_tokenizers(tokenizer, held_out_texts):
    assert tokenizer.backend == "tiktoken"
    texts = held_out_texts + random_texts(300, seed=1) + ODD + list(PROBE_TEXTS)
    reference = [e.ids for e in tokenizer.hf.encode_batch(texts, add_special_tokens=False)]
    assert tokenizer.encode_batch(texts) == reference
    slow = Tokenizer.from_file(tokenizer.name, fast=False)
    assert slow.backend == "tokenizers"
    assert slow.encode_batch(texts) == reference
    assert [slow.encode(t) for t in texts[:20]] == reference[:20]


def test_gpt4_split_is_read_alike_by_both_regex_engines(tokenizer):
    """Every code point below U+3000 and a spread sample above, in contexts that probe each branch."""
    code_points = [*range(0x3000), *range(0x3000, 0x110000, 211)]
    chars = [chr(c) for c in code_points if not 0xD800 <= c <= 0xDFFF]
    texts = [f"a{c}b 1{c}2 {c}{c} x {c}\n'{c} {c}'s" for c in chars]
    reference = [e.ids for e in tokenizer.hf.encode_batch_fast(texts, add_special_tokens=False)]
    assert tokenizer.encode_batch(texts) == reference


def test_special_tokens_and_ordinary_text(tokenizer):
    specials = tokenizer.special_tokens
    assert list(specials) == list(SPECIAL_TOKENS)
    assert tokenizer.eos_id == specials[EOS_TOKEN] == 0
    assert tokenizer.token_to_id("<|im_start|>") == specials["<|im_start|>"]
    text = f"before {EOS_TOKEN} after <|im_end|>"
    for tok in (tokenizer, Tokenizer.from_file(tokenizer.name, fast=False)):
        ids = tok.encode(text)
        assert not set(ids) & set(specials.values())  # special strings inside text stay text
        assert tok.decode(ids) == text
    assert tokenizer.decode([tokenizer.eos_id]) == EOS_TOKEN
    assert tokenizer.vocab_size == 512


def test_decode_bytes_streams_split_characters(tokenizer):
    text = "中文字符"
    ids = tokenizer.encode(text)
    pieces = [tokenizer.decode_bytes([i]) for i in ids]
    assert b"".join(pieces) == text.encode("utf-8")
    assert any(not _valid_utf8(p) for p in pieces)  # a token ends inside a character
    assert "\ufffd" in tokenizer.decode(ids[:1])
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.decode([tokenizer.vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.decode([-1])


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_mismatching_fast_path_falls_back(tokenizer, monkeypatch, caplog):
    def wrong_split(spec, name="groundup"):
        # GPT-2's split groups digits without limit, so the probe's long number encodes differently.
        spec = json.loads(json.dumps(spec))
        spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = GPT2_PATTERN
        return build_tiktoken(spec, name)

    monkeypatch.setattr(tokenizer_module, "build_tiktoken", wrong_split)
    with caplog.at_level(logging.WARNING, logger="groundup.tokenizer"):
        fallback = Tokenizer.from_file(tokenizer.name)
    assert fallback.backend == "tokenizers"
    assert "disagree" in caplog.text
    assert fallback.encode("1234567890") == tokenizer.encode("1234567890")


def test_missing_tokenizer_names_path_and_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="groundup tokenizer") as info:
        Tokenizer.from_file(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_split_pattern_of_accepts_only_byte_level_pipelines(tokenizer):
    spec = json.loads(tokenizer.hf.to_str())
    assert split_pattern_of(spec) == GPT4_PATTERN
    gpt2_style = {**spec, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}
    assert split_pattern_of(gpt2_style) == GPT2_PATTERN
    with pytest.raises(ValueError, match="prefix space"):
        split_pattern_of({**spec, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True}})
    with pytest.raises(ValueError, match="normalizer"):
        split_pattern_of({**spec, "normalizer": {"type": "NFC"}})
    with pytest.raises(ValueError, match="not BPE"):
        split_pattern_of({**spec, "model": {"type": "WordLevel"}})


def test_non_byte_level_tokenizer_uses_tokenizers():
    hf = tokenizers.Tokenizer(tokenizers.models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = Tokenizer(hf)
    assert tok.backend == "tokenizers"
    assert tok.encode("hello world") == [0, 1]
    assert tok.eos_id is None


def test_token_bytes_inverts_the_byte_alphabet():
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    assert sorted(token_bytes(c)[0] for c in alphabet) == list(range(256))


@pytest.mark.parametrize("pattern", ["gpt2", "digits"])
def test_other_named_patterns_also_take_the_fast_path(corpus_file, tmp_path, pattern):
    cfg = tokenizer_stage.Config(data=str(corpus_file), out=tmp_path / "tok", vocab_size=300, pattern=pattern,
                                 max_bytes=50_000)
    tok = Tokenizer.from_file(tokenizer_stage.run(cfg))
    assert tok.backend == "tiktoken"
    texts = random_texts(100, seed=2) + ODD + list(PROBE_TEXTS) + ["x = 1234567 + 89", "3.14159 and 2026-12-07"]
    assert tok.encode_batch(texts) == [e.ids for e in tok.hf.encode_batch(texts, add_special_tokens=False)]
    if pattern == "digits":  # no token holds two digits, whatever the merges
        pieces = [tok.decode([i]) for text in texts for i in tok.encode(text)]
        assert any(p.isdigit() for p in pieces) and all(sum(c.isdigit() for c in p) <= 1 for p in pieces)


def test_skip_special_tokens_and_pickling(tokenizer):
    import pickle

    ids = [tokenizer.eos_id, *tokenizer.encode("hi"), tokenizer.special_tokens["<|im_end|>"]]
    assert tokenizer.decode(ids) == "<|endoftext|>hi<|im_end|>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hi"
    copy = pickle.loads(pickle.dumps(tokenizer))
    assert copy.backend == "tiktoken" and copy.encode("héllo 123") == tokenizer.encode("héllo 123")
