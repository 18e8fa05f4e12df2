"""Needle in a haystack: can the model find one fact placed anywhere in a long prompt?

A prompt of exactly ``length`` tokens (the model's own tokens) holds filler text with one needle sentence,
``The special magic number is 4817203.``, put at ``depth`` (0: the filler's start, 1: its end, right
before the question), and ends with a question the model completes::

    A special magic number is hidden in the text below. Remember it.

    <filler ...> The special magic number is 4817203. <... filler>

    What is the special magic number in the text above? The special magic number is

The answer counts when its first number (commas removed) is the needle's. Over a grid of lengths × depths
this draws where in its context a model stops finding things (Kamradt's test; RULER's single-needle task).

The prompt is built as token ids, so its length is exact: the intro, the filler's sentences (each encoded on
its own, with its leading space), the needle and the question are encoded separately and joined; the filler
is cut to the token to fill the length, and the needle goes at the sentence boundary nearest to ``depth`` ×
the filler's tokens (so it sits between two whole sentences and within half the longest sentence of the
asked depth). The filler is prose groundup ships (``essay``), the English of the embedded corpus
(``corpus``: the Python documentation topics in ``pydoc_data``), or a text file; sentences holding digits
are left out so that no other number competes with the needle. Each prompt of a cell draws its own number
and its own starting sentence in the filler from the seed.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INTRO = "A special magic number is hidden in the text below. Remember it.\n\n"
NEEDLE = " The special magic number is {number}."
QUESTION = "\n\nWhat is the special magic number in the text above? The special magic number is"

ESSAY = """\
Most of what we learn does not arrive as a lesson. It comes sideways, while we are busy with something else,
and only later do we notice that it has changed how we see. A carpenter who has planed a hundred boards can
feel the grain before she looks at it. A gardener knows from the smell of the soil whether the week will be
kind to seedlings. Neither could tell you when the knowledge arrived, and neither learned it from a book.
This is worth remembering when we try to teach. The temptation is to explain everything at once, in the order
that makes sense to the teacher, and to treat the learner as a container to be filled. But understanding
grows the way a river finds its bed, by trying many small paths and keeping the ones that work. The best
teachers seem to know this. They set a problem that is slightly too hard, step back, and wait. They answer
questions with questions, not to be coy, but because the answer the student finds is the one that stays.
Patience is the rarest ingredient in all of this. We live among tools that reward speed, and speed feels like
progress even when it leads nowhere in particular. A letter written by hand takes an afternoon, and the writer
chooses each word because changing it would mean starting again. A message typed on a phone takes a moment,
and it can be revised forever, which is perhaps why so few of them are worth keeping. There is a kind of
attention that only slowness allows. Consider the old practice of walking to a town instead of riding. The
walker sees the hedges change from one valley to the next, notices which farms keep bees, and learns where
the bridge floods after rain. The rider arrives sooner and knows nothing of the road. Neither way is wrong,
but only one of them leaves you with a map in your head. Cities have their own version of this. A person who
takes the same bus every morning knows the city as a line, a sequence of stops with nothing in between. A
person who walks a different street each day slowly assembles a web, and one morning discovers that two
neighbourhoods they thought were far apart share a quiet square. Knowledge of a subject works the same way.
Facts memorised for an examination sit in a line and fade once the examination is over. Facts connected to
each other, approached from several directions, form a web that holds. Good questions are what make those
connections. Why does this work here and not there? What would happen if the rule were reversed? Who first
thought of it, and what were they trying to fix? A student who asks such questions is building a web, even if
the answers are wrong at first. It helps to be a little bored. Boredom is the feeling of a mind with spare
capacity, and a mind with spare capacity starts to wander into corners it would otherwise ignore. Many
inventions began as an idle thought on a long afternoon. The trick is to let the wandering happen without
filling every gap with noise. Finally, there is the matter of failure. Every craft is learned mostly through
mistakes, and the people who become good at something are usually the ones who made the most mistakes early,
when they were cheap. A joint that does not fit teaches more than one that does. A loaf that does not rise
sends the baker back to the yeast, the flour and the warmth of the kitchen, and the next loaf is better for it.
The aim is not to avoid failing but to fail in ways that teach, and to keep going until the lessons add up.
"""


@dataclass(kw_only=True)
class NeedleSettings:
    """The needle-in-a-haystack grid (the task ``needle`` in `--tasks`)."""

    lengths: list[int] = field(default_factory=list)
    """Prompt lengths in tokens (empty: four, evenly spaced from a prompt with no filler up to the model's
    block_size less `needle.max_new_tokens`). Each plus `needle.max_new_tokens` must fit the block size."""
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    """Where the needle goes, as a fraction of the filler (0: at its start, 1: at its end)."""
    samples: int = 1
    """Prompts per cell of the grid, each with its own number and filler offset."""
    filler: str = "essay"
    """'essay' (prose groundup ships), 'corpus' (the embedded corpus's English: the pydoc_data topics), or a
    text file."""
    max_new_tokens: int = 16
    """Most tokens generated per answer."""

    def __post_init__(self) -> None:
        if any(not 0.0 <= d <= 1.0 for d in self.depths) or not self.depths:
            raise ValueError(f"needle.depths must be fractions within [0, 1], got {self.depths}")
        if any(n < 1 for n in self.lengths):
            raise ValueError(f"needle.lengths must be positive token counts, got {self.lengths}")
        if self.samples < 1:
            raise ValueError(f"needle.samples must be >= 1, got {self.samples}")
        if self.max_new_tokens < 1:
            raise ValueError(f"needle.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(kw_only=True)
class NeedlePrompt:
    ids: list[int]
    """The prompt's token ids (exactly ``length`` of them)."""
    length: int
    depth: float
    """The depth asked for."""
    number: str
    """The magic number hidden in it."""
    needle_start: int
    """Index in ``ids`` of the needle's first token."""
    needle_tokens: int
    filler_before: int
    """Filler tokens before the needle."""
    filler_tokens: int
    """Filler tokens in the prompt (the depth's denominator)."""

    @property
    def actual_depth(self) -> float:
        """Where the needle went: the share of the filler before it."""
        return self.filler_before / self.filler_tokens if self.filler_tokens else self.depth


# ---------------------------------------------------------------------------- filler


def sentences_of(text: str) -> list[str]:
    """Prose sentences of ``text``: whitespace runs made single spaces, split after ``.``, ``!`` or ``?``; those
    holding digits (they would compete with the needle) or shorter than 20 characters are left out."""
    text = re.sub(r"\s+", " ", text).strip()
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)
    return [p for p in parts if len(p) >= 20 and not re.search(r"\d", p)]


def filler_sentences(filler: str) -> list[str]:
    """The filler's sentences: ``essay``, ``corpus`` or a text file's."""
    if filler == "essay":
        text = ESSAY
    elif filler == "corpus":
        from pydoc_data.topics import topics  # the embedded corpus's English (groundup.corpus reads the same)

        # Keep the prose lines of the reference (indented lines are code or grammar).
        text = "\n".join(line for key in sorted(topics) for line in topics[key].splitlines()
                         if line and not line.startswith(" ") and not line.startswith("*"))
    else:
        path = Path(filler)
        if not path.is_file():
            raise FileNotFoundError(f"needle.filler: {filler!r} is neither 'essay', 'corpus' nor a text file")
        text = path.read_text(encoding="utf-8")
    sentences = sentences_of(text)
    if not sentences:
        raise ValueError(f"needle.filler {filler!r}: no prose sentences without digits in it")
    return sentences


# ---------------------------------------------------------------------------- prompts


def fixed_tokens(tokenizer, number: str = "0000000") -> int:
    """Tokens of a prompt that are not filler: intro, needle and question."""
    return len(tokenizer.encode(INTRO)) + len(tokenizer.encode(NEEDLE.format(number=number))) + \
        len(tokenizer.encode(QUESTION))


def build_prompt(tokenizer, sentence_ids: Sequence[Sequence[int]], *, length: int, depth: float, number: str,
                 offset: int = 0) -> NeedlePrompt:
    """A prompt of exactly ``length`` tokens: the intro, filler sentences from ``offset`` on (cyclically, the
    last one cut to fill the length) with the needle at the sentence boundary nearest ``depth``, the question."""
    intro, question = tokenizer.encode(INTRO), tokenizer.encode(QUESTION)
    needle = tokenizer.encode(NEEDLE.format(number=number))
    budget = length - len(intro) - len(needle) - len(question)
    if budget < 0:
        raise ValueError(f"needle.lengths: {length} tokens is shorter than the prompt without filler "
                         f"({length - budget} tokens of intro, needle and question)")
    haystack: list[int] = []
    starts: list[int] = []
    i = offset
    while len(haystack) < budget:
        starts.append(len(haystack))
        haystack.extend(sentence_ids[i % len(sentence_ids)])
        i += 1
    haystack = haystack[:budget]
    boundaries = [s for s in starts if s <= budget] + [budget]
    target = depth * budget
    position = min(boundaries, key=lambda b: (abs(b - target), b))
    ids = intro + haystack[:position] + needle + haystack[position:] + question
    assert len(ids) == length
    return NeedlePrompt(ids=ids, length=length, depth=depth, number=number, needle_start=len(intro) + position,
                        needle_tokens=len(needle), filler_before=position, filler_tokens=budget)


def default_lengths(block_size: int, max_new_tokens: int, shortest: int, count: int = 4) -> list[int]:
    """``count`` lengths evenly spaced above ``shortest`` (a prompt with no filler), the last the longest prompt
    the context holds with its answer."""
    usable = block_size - max_new_tokens
    if usable <= shortest:
        raise ValueError(f"needle: the model's block_size ({block_size}) less needle.max_new_tokens "
                         f"({max_new_tokens}) leaves {usable} tokens, no more than the {shortest} of the intro, "
                         "needle and question alone; the model's context is too short for this test")
    return sorted({round(shortest + (usable - shortest) * k / count) for k in range(1, count + 1)})


def check_lengths(lengths: Sequence[int], block_size: int, max_new_tokens: int) -> None:
    """Every prompt and its answer must fit the model's context; else one error naming the setting."""
    too_long = [n for n in lengths if n + max_new_tokens > block_size]
    if too_long:
        raise ValueError(f"needle.lengths: {too_long} plus needle.max_new_tokens ({max_new_tokens}) exceed the "
                         f"model's block_size ({block_size}); the longest prompt that fits is "
                         f"{block_size - max_new_tokens} tokens")


def grid_prompts(tokenizer, settings: NeedleSettings, *, block_size: int, seed: int = 1234) -> list[NeedlePrompt]:
    """Every prompt of the grid, lengths outer, depths inner, ``settings.samples`` per cell; deterministic."""
    lengths = list(settings.lengths) or default_lengths(block_size, settings.max_new_tokens, fixed_tokens(tokenizer))
    check_lengths(lengths, block_size, settings.max_new_tokens)
    sentences = filler_sentences(settings.filler)
    sentence_ids = [tokenizer.encode(" " + s) for s in sentences]
    prompts = []
    for length in lengths:
        for depth in settings.depths:
            for sample in range(settings.samples):
                rng = random.Random(f"{seed}/{length}/{depth}/{sample}")
                number = str(rng.randint(1_000_000, 9_999_999))
                prompts.append(build_prompt(tokenizer, sentence_ids, length=length, depth=depth, number=number,
                                            offset=rng.randrange(len(sentence_ids))))
    return prompts


# ---------------------------------------------------------------------------- scoring


def answer_number(answer: str) -> str | None:
    """The first number in ``answer``, commas removed (``7,341,220`` reads ``7341220``)."""
    match = re.search(r"\d[\d,]*", answer)
    return match.group(0).replace(",", "") if match else None


def retrieved(answer: str, number: str) -> bool:
    return answer_number(answer) == number


def grid_scores(prompts: Sequence[NeedlePrompt], answers: Sequence[str]) -> tuple[dict[str, Any], list[dict]]:
    """The accuracy over all prompts and per cell (``grid``: lengths × depths, a list per length), and one
    sample per prompt."""
    from groundup.evaluate.multiple_choice import mean_stderr

    lengths = sorted({p.length for p in prompts})
    depths = list(dict.fromkeys(p.depth for p in prompts))
    cells: dict[tuple[int, float], list[float]] = {}
    samples = []
    for i, (p, answer) in enumerate(zip(prompts, answers, strict=True)):
        correct = retrieved(answer, p.number)
        cells.setdefault((p.length, p.depth), []).append(float(correct))
        samples.append({"index": i, "length": p.length, "depth": p.depth, "actual_depth": round(p.actual_depth, 4),
                        "needle_token": p.needle_start, "number": p.number, "prediction": answer,
                        "correct": correct})
    every = [float(s["correct"]) for s in samples]
    grid = [[(sum(cells[(n, d)]) / len(cells[(n, d)])) if (n, d) in cells else math.nan for d in depths]
            for n in lengths]
    metrics = {"accuracy": sum(every) / len(every), "accuracy_stderr": mean_stderr(every), "n": len(every),
               "grid": {"lengths": lengths, "depths": depths, "accuracy": grid,
                        "samples_per_cell": len(every) // max(1, len(cells))}}
    return metrics, samples


Generate = Callable[[list[list[int]], int], list[str]]
"""Answers to prompts given as token ids, at most so many new tokens each."""


def evaluate_needle(generate: Generate, tokenizer, settings: NeedleSettings, *, block_size: int,
                    seed: int = 1234) -> tuple[dict[str, Any], list[dict]]:
    """Build the grid's prompts, answer them with ``generate``, score them."""
    prompts = grid_prompts(tokenizer, settings, block_size=block_size, seed=seed)
    answers = generate([p.ids for p in prompts], settings.max_new_tokens)
    return grid_scores(prompts, answers)
