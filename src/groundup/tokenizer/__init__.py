"""Byte-level BPE tokenizers: the special tokens, the split patterns and the public :class:`Tokenizer`.

A tokenizer is stored as a Hugging Face ``tokenizer.json`` (what ``groundup tokenizer`` writes
and what every model dir carries). :class:`Tokenizer` reads one and encodes with ``tiktoken``
built from that same file: the same byte-level tokens, ranks and split regex, at about three
times the speed of ``tokenizers``. On load it encodes a probe text both ways; if tiktoken cannot
be built from the file, or the two disagree, it logs why and encodes with ``tokenizers``.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tokenizers

from groundup.artifacts import find_tokenizer_file

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
"""Ends every document in the token shards (and every generated answer)."""
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
"""Turn delimiters of the chat template, reserved from the start so fine-tuning needs no new rows."""
RESERVED_TOKENS = tuple(f"<|reserved_{i}|>" for i in range(8))
"""Spare special tokens for later uses (tool calls, fill-in-the-middle) without resizing a model."""
SPECIAL_TOKENS = (EOS_TOKEN, *CHAT_TOKENS, *RESERVED_TOKENS)
"""Every special token, in id order (ids 0..len-1)."""

# Other names under which an end-of-text token appears in tokenizers this package did not train.
_EOS_CANDIDATES = (EOS_TOKEN, "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>")

# cl100k's split (GPT-4) without its final `\s++$` branch: Oniguruma (tokenizers) reads `$` as end of
# line, fancy-regex (tiktoken) as end of text, so that branch would split differently. The rest
# splits identically in both engines for every code point (checked code point by code point).
# Digits split into runs of at most three.
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}|"""
                r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""GPT-2's split, which is also what ``tokenizers``' ByteLevel applies with ``use_regex=True``."""
DIGITS_PATTERN = GPT4_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
"""GPT-4's split with every digit a piece of its own (as Llama 2, Qwen2 and DeepSeek split numbers): a number
is a run of digit tokens, so arithmetic and copying numbers work digit by digit."""
PATTERNS = {"gpt4": GPT4_PATTERN, "gpt2": GPT2_PATTERN, "digits": DIGITS_PATTERN}

# Encoded both ways when a tokenizer loads: code, prose, scripts, whitespace runs, digits, combining
# marks without a base, emoji sequences and special-token strings inside ordinary text.
PROBE_TEXTS = (
    "def f(x):\n    return x ** 2  # square\n\n\n\tif x:\r\n\t\tpass\n",
    "It's 3.14159 o'clock; I'LL say we've 1234567890 apples, 2024-01-01, 1,000,000.",
    "中文字符测试，包括标点。日本語のテキスト。한국어 텍스트.",
    "ภาษาไทย สวัสดีครับ ทดสอบ",
    "Emoji 👍🏽 👨\u200d👩\u200d👧 🇫🇷 and \u0301\u0308 lone marks, e\u0301, \u200b zero width, \ufeff bom",
    " " * 17 + "x" + "\t" * 5 + "\n" * 7 + " \n \n" + "\u00a0\u3000 end  ",
    "<|endoftext|> is text here, as is <|im_start|>user and <|reserved_0|>.",
    "Ελληνικά, русский, العربية, עברית, हिन्दी, ǅ ſ K 'ſ 'S 'LL",
)


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (the alphabet of byte-level BPE tokens)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


@functools.cache
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_bytes(token: str) -> bytes:
    """The bytes a byte-level token stands for; KeyError if it holds a character outside the byte alphabet."""
    table = unicode_to_bytes()
    return bytes(table[c] for c in token)


def resolve_pattern(pattern: str) -> str:
    """A named split pattern (``gpt4``, ``gpt2``, ``digits``) or the given regex itself."""
    return PATTERNS.get(pattern, pattern)


def split_pattern_of(spec: dict[str, Any]) -> str:
    """The split regex of a byte-level pipeline (parsed ``tokenizer.json``) that tiktoken can mirror.

    Accepts the two shapes that split text and then map bytes, with no normalizer and no prefix
    space: ``Sequence[Split(regex, isolated), ByteLevel(use_regex=false)]`` (what this package
    writes) or ``ByteLevel(use_regex=true)`` (GPT-2 style). Raises ValueError saying what differs.
    """
    if spec.get("normalizer") is not None:
        raise ValueError("has a normalizer")
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"model is {model.get('type')}, not BPE")
    if model.get("byte_fallback") or model.get("dropout") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix"):
        raise ValueError("BPE uses byte fallback, dropout or subword affixes")
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True):
        if steps[0].get("add_prefix_space"):
            raise ValueError("ByteLevel adds a prefix space")
        return GPT2_PATTERN
    if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel":
        split, byte_level = steps
        if byte_level.get("use_regex", True) or byte_level.get("add_prefix_space"):
            raise ValueError("ByteLevel after Split must have use_regex=false and no prefix space")
        if str(split.get("behavior")).lower() != "isolated" or split.get("invert"):
            raise ValueError("Split must be 'isolated' and not inverted")
        regex = (split.get("pattern") or {}).get("Regex")
        if not regex:
            raise ValueError("Split pattern is a plain string, not a regex")
        return regex
    raise ValueError(f"pre-tokenizer {[s.get('type') for s in steps]} is not a byte-level split")


def build_tiktoken(spec: dict[str, Any], name: str = "groundup"):
    """A ``tiktoken.Encoding`` with the tokens, ranks, split regex and special tokens of a parsed tokenizer.json.

    A byte-level BPE trained by ``groundup tokenizer`` (or by ``tokenizers``' own trainer) gives each merged
    token the next id, so ids are merge ranks, which is what tiktoken's ``mergeable_ranks`` are. Raises ValueError if the file is not
    such a tokenizer (the caller then stays on ``tokenizers``).
    """
    import tiktoken

    pattern = split_pattern_of(spec)
    added = spec.get("added_tokens") or []
    if any(not t.get("special") for t in added):
        # tokenizers matches non-special added tokens inside ordinary text; tiktoken has no such notion.
        raise ValueError("has non-special added tokens")
    special = {t["content"]: int(t["id"]) for t in added}
    ranks: dict[bytes, int] = {}
    for token, token_id in spec["model"]["vocab"].items():
        if token in special:
            continue
        try:
            ranks[token_bytes(token)] = int(token_id)
        except KeyError:
            raise ValueError(f"token {token!r} is not byte-level") from None
    if len(ranks) + len(special) != len(set(ranks.values()) | set(special.values())):
        raise ValueError("two tokens share an id or a byte string")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{len(missing)} single bytes have no token (e.g. {missing[0]:#04x})")
    try:
        return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)
    except ValueError as e:  # e.g. a regex fancy-regex does not accept
        raise ValueError(f"tiktoken rejected it: {e}") from None


class Tokenizer:
    """Encode and decode with a byte-level BPE tokenizer stored as a ``tokenizer.json``.

    ``encode`` treats its input as ordinary text: the string ``<|endoftext|>`` inside a document
    becomes ordinary tokens, never the EOS id (special ids come only from ``special_tokens``).
    """

    def __init__(self, backend: tokenizers.Tokenizer, *, name: str = "tokenizer", fast: bool = True) -> None:
        self._hf = backend
        # Special-token strings in text are encoded as text; only `special_tokens` hands out their ids.
        self._hf.encode_special_tokens = True
        self.name = name
        spec = json.loads(backend.to_str())
        self._special = {t["content"]: int(t["id"]) for t in spec.get("added_tokens") or [] if t.get("special")}
        self._id_bytes = self._byte_table(spec)
        self._tiktoken = None
        if fast:
            self._tiktoken = self._fast_path(spec)

    @classmethod
    def from_file(cls, path: str | Path, *, fast: bool = True) -> Tokenizer:
        """Load a ``tokenizer.json`` or a directory holding one (a tokenizer dir or a model dir)."""
        file = find_tokenizer_file(path)
        try:
            backend = tokenizers.Tokenizer.from_file(str(file))
        except Exception as e:
            raise ValueError(f"{file}: not a readable tokenizer.json ({e})") from e
        return cls(backend, name=str(file), fast=fast)

    # ------------------------------------------------------------------------ construction

    def _byte_table(self, spec: dict[str, Any]) -> list[bytes] | None:
        """id -> bytes, for decoding without ``tokenizers``; None if some token is not byte-level."""
        table: list[bytes | None] = [None] * self.vocab_size
        try:
            for token, token_id in spec["model"]["vocab"].items():
                if token not in self._special:
                    table[int(token_id)] = token_bytes(token)
        except (KeyError, IndexError, TypeError):
            return None
        for token, token_id in self._special.items():
            table[token_id] = token.encode("utf-8")
        if any(b is None for b in table):
            return None
        return table  # type: ignore[return-value]

    def _fast_path(self, spec: dict[str, Any]):
        try:
            encoding = build_tiktoken(spec, name=Path(self.name).parent.name or "groundup")
        except ValueError as e:
            log.info("%s: encoding with tokenizers (tiktoken not usable: %s)", self.name, e)
            return None
        for text in PROBE_TEXTS:
            if encoding.encode_ordinary(text) != self._hf.encode(text, add_special_tokens=False).ids:
                log.warning("%s: tiktoken and tokenizers disagree on %r; encoding with tokenizers", self.name,
                            text[:40])
                return None
        return encoding

    # ------------------------------------------------------------------------ properties

    @property
    def backend(self) -> str:
        """Which library encodes: ``"tiktoken"`` (the fast path) or ``"tokenizers"``."""
        return "tiktoken" if self._tiktoken is not None else "tokenizers"

    @property
    def hf(self) -> tokenizers.Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (what is saved as tokenizer.json)."""
        return self._hf

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the model's embedding needs at least this many rows)."""
        return self._hf.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    @property
    def eos_id(self) -> int | None:
        """The end-of-text id (``<|endoftext|>`` or a known equivalent), or None if the vocabulary has none."""
        for token in _EOS_CANDIDATES:
            token_id = self._hf.token_to_id(token)
            if token_id is not None:
                return token_id
        return None

    def token_to_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._hf.id_to_token(token_id)

    # ------------------------------------------------------------------------ encode / decode

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, special-token strings included as ordinary text (a document quoting
        ``<|endoftext|>`` must not end; see :meth:`encode_with_specials` for rendered chat templates)."""
        if self._tiktoken is not None:
            return self._tiktoken.encode_ordinary(text)
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_with_specials(self, text: str) -> list[int]:
        """Ids of ``text`` with the special-token strings (``<|im_start|>``) turned into their ids: for text a
        chat template rendered, which fine-tuning trains on and generation must be prompted with alike
        (as transformers' ``apply_chat_template`` tokenizes it)."""
        if not self._special:
            return self.encode(text)
        ids: list[int] = []
        for i, piece in enumerate(self._special_pattern.split(text)):
            if i % 2:
                ids.append(self._special[piece])
            elif piece:
                ids.extend(self.encode(piece))
        return ids

    @functools.cached_property
    def _special_pattern(self) -> re.Pattern:
        return re.compile("(" + "|".join(re.escape(s) for s in sorted(self._special, key=len, reverse=True)) + ")")

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        if self._tiktoken is not None:
            return self._tiktoken.encode_ordinary_batch(texts)
        return [e.ids for e in self._hf.encode_batch_fast(texts, add_special_tokens=False)]

    def decode_bytes(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> bytes:
        """The bytes of ``ids``; a token may end inside a UTF-8 character, so stream on bytes, not strings."""
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"token id {bad} out of range for a vocabulary of {self.vocab_size}")
        if skip_special_tokens:
            special = set(self._special.values())
            ids = [i for i in ids if i not in special]
        if self._id_bytes is not None:
            return b"".join([self._id_bytes[i] for i in ids])
        return self._hf.decode(ids, skip_special_tokens=False).encode("utf-8")

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; bytes that do not form valid UTF-8 become U+FFFD, as in ``tokenizers``.

        Special tokens decode to their strings (``<|endoftext|>``) unless ``skip_special_tokens``.
        """
        return self.decode_bytes(ids, skip_special_tokens=skip_special_tokens).decode("utf-8", errors="replace")

    # A tiktoken Encoding built here cannot be pickled; rebuild from the JSON (for spawned workers).
    def __getstate__(self) -> dict[str, Any]:
        return {"json": self._hf.to_str(), "name": self.name, "fast": self._tiktoken is not None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(tokenizers.Tokenizer.from_str(state["json"]), name=state["name"], fast=state["fast"])

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, backend={self.backend!r})"
