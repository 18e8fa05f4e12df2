"""Fine-tuning data: JSONL records checked line by line, chats tokenized with loss masks, padded batches.

Record shapes (one JSON object per line):

- instruction (Alpaca): ``{"instruction", "input" (optional), "output", "system" (optional)}``
- chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``, multi-turn; with tool
  use, ``"tools": [OpenAI tool objects]`` beside the messages, assistant messages with ``tool_calls`` and
  ``tool`` messages answering them (``tool_call_id``): the calls are trained, the tool results are not
- preference (DPO): ``{"prompt": str or messages, "chosen": str, "rejected": str}``
- classification: ``{"text": str, "label": str or int}``

A bad line (not JSON, missing keys, unknown role) raises :class:`DataError` naming the file and line,
or, with ``skip_bad_lines``, is skipped and counted in :class:`DataStats`. An empty dataset is an error.

Loss masking: a conversation is rendered with the model's chat template one message at a time, so
that the text each message adds is known exactly (the rendering of the first k messages must be a
prefix of the rendering of k + 1; a template that breaks this is refused). For an assistant message
the part after the generation prompt (``<|im_start|>assistant\\n``) is trained: its content and the
end-of-turn token that closes it, up to trailing whitespace. Each piece is tokenized on its own, so
the prompt is tokenized exactly as at inference (rendered with ``add_generation_prompt``) and the
answer starts at a token boundary. Special-token strings in the rendered text become special ids.

Over-long examples (more than ``max_len`` + 1 tokens) keep their first ``max_len`` + 1 tokens (the
system prompt and earliest turns), counted as ``truncated``; one left with no trained token is
dropped and counted as ``dropped_no_target``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groundup.artifacts import JsonlError, JsonlStats
from groundup.artifacts import read_jsonl as read_jsonl_lines
from groundup.tokenizer.chat import ChatFormatError, render_chat, validate_messages
from groundup.tokens.packing import windowed_bins

IGNORE_INDEX = -100


class DataError(ValueError):
    """A dataset problem, with the file and line it comes from."""


@dataclass
class DataStats:
    """What happened to the input records; written to the output dir so nothing is lost silently."""

    lines: int = 0
    examples: int = 0
    skipped: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "examples": self.examples, "skipped": self.skipped,
                "truncated": self.truncated, "dropped_no_target": self.dropped_no_target,
                "first_errors": self.errors[:20]}


def read_jsonl(path: str | Path, parse, stats: DataStats, *, skip_bad_lines: bool = False) -> list[Any]:
    """Parse every non-blank line of ``path`` with ``parse(obj) -> record``; errors name ``path:line``.

    Lines are read by :func:`groundup.artifacts.read_jsonl`; an unfinished last line (a writer stopped mid-line)
    is skipped and counted even without ``skip_bad_lines``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset not found: {path}")
    hint = " (pass --skip_bad_lines true to skip and count bad lines)"
    records = []

    def skipped(where: str, reason: str) -> None:
        stats.skipped += 1
        stats.errors.append(f"{where}: {reason}")

    lines = JsonlStats(on_skip=skipped)
    try:
        for lineno, obj in read_jsonl_lines(path, stats=lines, strict=not skip_bad_lines):
            try:
                records.append(parse(obj))
            except (ValueError, KeyError, TypeError) as e:
                if not skip_bad_lines:
                    raise DataError(f"{path}:{lineno}: {e}{hint}") from None
                lines.skip(f"{path}:{lineno}", str(e))
    except JsonlError as e:
        raise DataError(f"{e}{hint}") from None
    stats.lines += lines.lines
    if not records:
        raise DataError(f"{path}: no usable records ({stats.lines} lines, {stats.skipped} skipped)")
    return records


def _require(obj: dict, keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(map(repr, missing))} (has {', '.join(map(repr, obj)) or 'none'})")
    for k in keys:
        if not isinstance(obj[k], str):
            raise ValueError(f"{k!r} must be a string, got {type(obj[k]).__name__}")


def parse_conversation(obj: dict) -> list[dict[str, str]]:
    """A chat record or an Alpaca record as a list of messages that ends with an assistant turn."""
    if "messages" in obj:
        try:
            messages = validate_messages(obj["messages"])
        except ChatFormatError as e:
            raise ValueError(str(e)) from None
    elif "instruction" in obj or "output" in obj:
        _require(obj, ("instruction", "output"))
        user = obj["instruction"]
        if obj.get("input"):
            user = f"{user}\n\n{obj['input']}"
        messages = ([{"role": "system", "content": obj["system"]}] if obj.get("system") else [])
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": obj["output"]}]
    else:
        raise ValueError("expected 'messages' (chat) or 'instruction' and 'output' (Alpaca); "
                         f"got keys {', '.join(map(repr, obj)) or 'none'}")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("the conversation has no assistant message to learn from")
    return messages


def parse_prompt(obj: dict) -> list[dict[str, str]]:
    """A record's ``prompt`` as messages; a string prompt is one user message."""
    if "prompt" not in obj:
        raise ValueError("missing key 'prompt'")
    prompt = obj["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    try:
        return validate_messages(prompt, "prompt")
    except ChatFormatError as e:
        raise ValueError(str(e)) from None


def parse_tools(obj: dict) -> list[dict] | None:
    """A chat record's ``tools`` (OpenAI's ``{"type": "function", "function": {"name", ...}}``), or None."""
    tools = obj.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
            for t in tools):
        raise ValueError("'tools' must be a list of {'type': 'function', 'function': {'name', 'parameters'}}")
    return tools


def parse_preference(obj: dict) -> tuple[list[dict[str, str]], str, str]:
    """(prompt messages, chosen, rejected); a string prompt is one user message."""
    if "prompt" not in obj:
        raise ValueError("missing key 'prompt'")
    _require(obj, ("chosen", "rejected"))
    return parse_prompt(obj), obj["chosen"], obj["rejected"]


def parse_labeled(obj: dict) -> tuple[str, str]:
    if "text" not in obj or "label" not in obj:
        raise ValueError(f"expected keys 'text' and 'label', got {', '.join(map(repr, obj)) or 'none'}")
    if not isinstance(obj["text"], str):
        raise ValueError(f"'text' must be a string, got {type(obj['text']).__name__}")
    if not isinstance(obj["label"], str | int) or isinstance(obj["label"], bool):
        raise ValueError(f"'label' must be a string or an integer, got {type(obj['label']).__name__}")
    return obj["text"], str(obj["label"])


def parse_scored(obj: dict) -> tuple[str, float]:
    """A text and the number to learn: its ``score`` (``groundup annotate``'s annotations.jsonl as it is), else
    a numeric ``label``."""
    if "text" not in obj or ("score" not in obj and "label" not in obj):
        raise ValueError(f"expected keys 'text' and 'score', got {', '.join(map(repr, obj)) or 'none'}")
    if not isinstance(obj["text"], str):
        raise ValueError(f"'text' must be a string, got {type(obj['text']).__name__}")
    key = "score" if "score" in obj else "label"
    value = obj[key]
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
        raise ValueError(f"{key!r} must be a number, got {value!r}")
    return obj["text"], float(value)


# ---------------------------------------------------------------------------- tokenization


def chat_segments(messages: list[dict[str, Any]], template: str | None,
                  tools: list[dict] | None = None) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, trained) pieces: the assistant answers (their tool calls included)
    are the trained ones; tool results are context."""
    pieces: list[tuple[str, bool]] = []
    done = ""  # rendering of the messages handled so far
    for k, message in enumerate(messages):
        full = render_chat(messages[: k + 1], template, tools=tools)
        if not full.startswith(done):
            raise ValueError("the chat template does not render conversations prefix by prefix; "
                             "loss masks cannot be found for it")
        if message["role"] != "assistant":
            pieces.append((full[len(done):], False))
        else:
            # (a conversation that opens with the assistant has no generation prompt to render: all trained)
            prompt = render_chat(messages[:k], template, add_generation_prompt=True, tools=tools) if k else ""
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise ValueError("the chat template's generation prompt is not a prefix of the assistant turn")
            answer = full[len(prompt):]
            trained = answer.rstrip()
            pieces += [(prompt[len(done):], False), (trained, True), (answer[len(trained):], False)]
        done = full
    return [(text, trained) for text, trained in pieces if text]


@dataclass
class Example:
    """One training sequence: ``ids`` (L,) and ``labels`` (L,) with -100 where no loss is taken."""

    ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def tokenize_segments(tokenizer, pieces: list[tuple[str, bool]]) -> Example:
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in pieces:
        piece = tokenizer.encode_with_specials(text)
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    return Example(ids, labels)


def truncate(example: Example, max_len: int, stats: DataStats) -> Example | None:
    """Keep the first ``max_len`` + 1 tokens (inputs and shifted targets); None if nothing is left to learn."""
    if len(example) > max_len + 1:
        example = Example(example.ids[: max_len + 1], example.labels[: max_len + 1])
        stats.truncated += 1
    if all(label == IGNORE_INDEX for label in example.labels[1:]):
        stats.dropped_no_target += 1
        return None
    return example


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of ``range(n)`` into train and held-out indices (at least one held out if asked)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(int(round(n * val_fraction)), 1 if val_fraction > 0 else 0), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train_val(load: Callable[[Path], list], data: Path, val_data: Path | None, val_fraction: float,
              seed: int) -> tuple[list, list]:
    """Training and held-out records: ``load(val_data)`` when given, else a seeded split of ``load(data)``."""
    records = load(data)
    if val_data:
        return records, load(val_data)
    train_idx, val_idx = split_indices(len(records), val_fraction, seed)
    return [records[i] for i in train_idx], [records[i] for i in val_idx]


# ---------------------------------------------------------------------------- batching


def pad_batch(examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (B, T) and shifted targets (B, T), right-padded: padding has target -100, and causal
    attention keeps padding on the right from affecting the real positions."""
    x, y, _ = collate_rows([[e] for e in examples], pad_id)
    return x, y


def collate_rows(rows: Sequence[Sequence[Example]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of one or more examples each, as inputs (B, T), targets (B, T) and segments (B, T), right-padded.

    Each example contributes its own inputs ``ids[:-1]`` and shifted labels ``labels[1:]`` (its last token is
    only a target), so no target crosses from one example into the next; ``segments`` numbers the examples of
    a row (the padding is one more), for document-causal attention between packed examples.
    """
    T = max(sum(len(e) - 1 for e in row) for row in rows)
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    segments = torch.zeros((len(rows), T), dtype=torch.long)
    for i, row in enumerate(rows):
        at = 0
        for j, e in enumerate(row):
            n = len(e) - 1
            x[i, at:at + n] = torch.tensor(e.ids[:-1])
            y[i, at:at + n] = torch.tensor(e.labels[1:])
            segments[i, at:at + n] = j
            at += n
        segments[i, at:] = len(row)
    return x, y, segments


PACK_WINDOW = 1024
"""Examples packed together at a time: best fit over this many (after a seeded shuffle) fills rows to within a
fraction of a percent, in time and memory that do not grow with the dataset."""


def pack_examples(lengths: Sequence[int], capacity: int, seed: int, window: int = PACK_WINDOW) -> list[list[int]]:
    """Example indices grouped into rows of at most ``capacity`` positions (``lengths``: each example's
    positions, its tokens - 1): a seeded shuffle, then best-fit decreasing over consecutive windows of
    ``window`` examples (Multipack's scheme, :func:`groundup.tokens.packing.pack_bins`)."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    return [order[row].tolist() for row in windowed_bins(np.asarray(lengths, dtype=np.int64)[order], capacity, window)]


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True) -> list[list[int]]:
    """The batches of one epoch as lists of example indices: a pure function of (seed, epoch).

    Length-grouped: shuffle, sort within chunks of 32 batches by length (little padding), then shuffle
    the batches, so lengths are grouped but the order stays random.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        chunk = batch_size * 32
        lens = np.asarray(lengths)
        order = np.concatenate([c[np.argsort(-lens[c], kind="stable")]
                                for c in np.array_split(order, max(1, -(-len(order) // chunk)))])
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))] if group_by_length else batches


class ExampleBatches:
    """An endless sampler of padded batches over examples, epoch after epoch, numbered from 0.

    Batch ``k`` is batch ``k mod n`` of epoch ``k // n`` (``n`` batches per epoch): a pure function of
    (seed, k), so under torchrun each data-parallel rank can take its own numbered batches of one global
    stream (:class:`groundup.parallel.data.RankBatches`). The state is ``batches``, the count handed
    out (the global position), so a resumed run sees exactly the batches of an uninterrupted one, on
    any number of ranks. ``collate(indices)`` builds a batch from example indices (padded SFT pairs,
    DPO pairs, ...).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, collate, *, seed: int = 0,
                 group_by_length: bool = True) -> None:
        if not len(lengths):
            raise DataError("no training examples")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.lengths, self.batch_size, self.collate = list(lengths), batch_size, collate
        self.seed, self.group_by_length = seed, group_by_length
        self.per_epoch = -(-len(self.lengths) // batch_size)
        """Batches in one epoch (the last may be short)."""
        self.batches = 0
        """Batches handed out so far: the next batch is number ``batches``."""
        self._epoch, self._order = 0, epoch_batches(self.lengths, batch_size, seed, 0, group_by_length)

    def indices(self, k: int) -> list[int]:
        """Example indices of batch number ``k``."""
        epoch, i = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = epoch_batches(self.lengths, self.batch_size, self.seed, epoch, self.group_by_length)
        return self._order[i]

    def batch(self, k: int):
        """Batch number ``k``, without moving the counter."""
        return self.collate(self.indices(k))

    def next_batch(self):
        batch = self.batch(self.batches)
        self.batches += 1
        return batch

    def state_dict(self) -> dict:
        return {"batches": self.batches, "epoch": self.batches // self.per_epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position; a state of the older form (``epoch``, ``position`` in it) reads the same."""
        if state["seed"] != self.seed:
            self.seed = state["seed"]
            self._epoch, self._order = 0, epoch_batches(self.lengths, self.batch_size, self.seed, 0,
                                                        self.group_by_length)
        if "batches" in state:
            self.batches = int(state["batches"])
        else:
            self.batches = int(state["epoch"]) * self.per_epoch + int(state["position"])
