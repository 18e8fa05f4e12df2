"""Tasks from local files: loaders for the common benchmark layouts, prompt templates, k-shot examples.

A task is a list of items read from files on disk (nothing downloads). The layout is recognised from
the file: MMLU's header-less CSVs (``<subject>_test.csv`` / ``<subject>_dev.csv``), or JSONL whose
fields say what it is:

    ==============  =========================================================  ==================================
    layout          fields                                                     prompt (as lm-evaluation-harness)
    ==============  =========================================================  ==================================
    mmlu (CSV)      question, A, B, C, D, answer letter                         ``{q}\\nA. ..\\nD. ..\\nAnswer:``
    hellaswag       ctx_a, ctx_b, activity_label, endings, label               ``{activity}: {ctx_a} {Ctx_b}``
    arc             question (str or {stem, choices}), choices, answerKey      ``Question: {q}\\nAnswer:``
    piqa            goal, sol1, sol2, label                                    ``Question: {goal}\\nAnswer:``
    truthfulqa_mc   question, mc1_targets {choices, labels}                    primer + ``Q: {q}\\nA:``
    generic         question, choices, answer (index or the choice's text)      ``Question: {q}\\nAnswer:``
    generation      prompt (or question), answer / reference / references
    code            prompt, test, entry_point (HumanEval)
    ifeval          prompt, instruction_id_list, kwargs (IFEval)                the prompt as it is
    perplexity      text (or a .txt file)
    ==============  =========================================================  ==================================

Every bad record raises ``ValueError`` naming the file and line: a missing field, an empty choice
list, an answer index out of range. k-shot examples come from a dev split (MMLU's ``*_dev.csv``, or a
``<name>.dev.jsonl`` / ``dev.jsonl`` beside the task file), chosen as lm-eval chooses them: MMLU's first dev
items in file order (its ``first_n`` sampler), otherwise drawn with one seeded ``random.Random`` per task.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from groundup.artifacts import JsonlError, JsonlStats, read_jsonl

TaskKind = Literal["multiple_choice", "generation", "code", "perplexity", "ifeval", "needle"]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(kw_only=True)
class Item:
    """One task item, ready to be scored."""

    query: str
    """The prompt text (without few-shot examples or description)."""
    choices: list[str] = field(default_factory=list)
    """Multiple choice: the continuations scored after ``target_delimiter``."""
    gold: int | None = None
    """Multiple choice: index of the right choice."""
    references: list[str] = field(default_factory=list)
    """Generation: acceptable answers (the first is the main reference for BLEU, chrF and ROUGE)."""
    test: str = ""
    """Code: the test program run after a candidate (it calls ``check(entry_point)`` when given)."""
    entry_point: str = ""
    instructions: list[dict[str, Any]] = field(default_factory=list)
    """IFEval: the instructions to check, ``[{"id", "kwargs"}]`` (see :mod:`groundup.evaluate.ifeval`)."""
    subject: str | None = None
    """A subset name reported on its own (MMLU's subject, HellaSwag's activity)."""
    source: str = ""
    """``file:line`` of the record, for errors and samples.jsonl."""

    def target(self) -> str:
        """The right answer as text (for few-shot examples)."""
        if self.choices and self.gold is not None:
            return self.choices[self.gold]
        return self.references[0] if self.references else ""


@dataclass(kw_only=True)
class Task:
    name: str
    kind: TaskKind
    items: list[Item]
    files: list[Path]
    fewshot_pool: list[Item] = field(default_factory=list)
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    description: str = ""
    """Text before the few-shot examples; may name ``{subject}`` (MMLU's 'The following are ...')."""
    fewshot_sampler: Literal["first_n", "random"] = "random"
    """How few-shot examples are chosen, as lm-eval's task for the layout does (``first_n`` for MMLU)."""

    def sha256(self) -> str:
        h = hashlib.sha256()
        for f in sorted(self.files):
            h.update(f.read_bytes())
        return h.hexdigest()

    def contexts(self, items: list[Item], *, num_fewshot: int = 0, seed: int = 1234) -> list[str]:
        """Each item's prompt: the description, ``num_fewshot`` solved examples from the dev split, then its query.

        Examples come from the dev items of the item's subject when there are enough (else the whole dev split),
        chosen as lm-evaluation-harness's sampler for the layout chooses them (``fewshot_sampler``):
        ``first_n`` takes the first dev items in file order (MMLU's canonical examples); ``random`` draws with one
        ``random.Random(seed)`` for the task, consumed item after item in order (lm-eval's default sampler with
        its ``fewshot_random_seed``), so the same seed and items give lm-eval's prompts.
        """
        rnd = random.Random(seed)
        return [self._context(item, num_fewshot, rnd) for item in items]

    def context(self, item: Item, *, num_fewshot: int = 0, seed: int = 1234) -> str:
        """One item's prompt, as :meth:`contexts` gives it for a task whose first item it is."""
        return self.contexts([item], num_fewshot=num_fewshot, seed=seed)[0]

    def _context(self, item: Item, num_fewshot: int, rnd: random.Random) -> str:
        description = self.description.format(subject=(item.subject or self.name).replace("_", " "))
        if num_fewshot <= 0:
            return description + item.query
        pool = [x for x in self.fewshot_pool if x.subject == item.subject] if item.subject else []
        if len(pool) < num_fewshot:
            pool = self.fewshot_pool
        if len(pool) < num_fewshot:
            raise ValueError(f"task {self.name}: {num_fewshot}-shot asked for, but the dev split has only "
                             f"{len(pool)} usable examples ({', '.join(map(str, self.files))})")
        shots = pool[:num_fewshot] if self.fewshot_sampler == "first_n" else rnd.sample(pool, num_fewshot)
        examples = self.fewshot_delimiter.join(x.query + self.target_delimiter + x.target() for x in shots)
        return description + examples + self.fewshot_delimiter + item.query


class TaskFileError(ValueError):
    pass


def _fail(source: str, message: str) -> TaskFileError:
    return TaskFileError(f"{source}: {message}")


def _require(record: dict, key: str, source: str, kind: str) -> Any:
    if key not in record or record[key] is None:
        raise _fail(source, f"missing field {key!r} (a {kind} record needs it; fields present: {sorted(record)})")
    return record[key]


def _check_choices(choices: Any, gold: Any, source: str) -> tuple[list[str], int]:
    if not isinstance(choices, list) or not choices:
        raise _fail(source, "empty choice list" if isinstance(choices, list) else "choices must be a list")
    choices = [str(c) for c in choices]
    if isinstance(gold, str) and not gold.lstrip("-").isdigit():
        if gold in choices:
            gold = choices.index(gold)
        elif len(gold) == 1 and gold.upper() in LETTERS[: len(choices)]:
            gold = LETTERS.index(gold.upper())
        else:
            raise _fail(source, f"answer {gold!r} is neither an index nor one of the choices")
    try:
        gold = int(gold)
    except (TypeError, ValueError):
        raise _fail(source, f"answer {gold!r} is not an index") from None
    if not 0 <= gold < len(choices):
        raise _fail(source, f"answer index {gold} out of range for {len(choices)} choices")
    return choices, gold


# ---------------------------------------------------------------------------- record parsers


def _hellaswag_preprocess(text: str) -> str:
    # lm-eval's hellaswag.utils.preprocess: WikiHow artifacts removed, spacing fixed.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def parse_record(record: dict, source: str) -> tuple[str, Item]:
    """Recognise a JSONL record's layout and turn it into an Item; returns (layout, item)."""
    if not isinstance(record, dict):
        raise _fail(source, f"expected a JSON object, got {type(record).__name__}")
    if "instruction_id_list" in record:
        from groundup.evaluate.ifeval import IFEvalRecordError, parse_instructions

        try:
            instructions = parse_instructions(record, source)
        except IFEvalRecordError as e:
            raise TaskFileError(str(e)) from None
        return "ifeval", Item(query=record["prompt"], instructions=instructions, source=source)
    if "ctx_a" in record or "endings" in record:
        ctx_b = str(_require(record, "ctx_b", source, "HellaSwag"))
        query = _hellaswag_preprocess(f"{_require(record, 'activity_label', source, 'HellaSwag')}: "
                                      f"{_require(record, 'ctx_a', source, 'HellaSwag')} {ctx_b.capitalize()}")
        endings = _require(record, "endings", source, "HellaSwag")
        choices, gold = _check_choices([_hellaswag_preprocess(str(e)) for e in endings] if isinstance(endings, list)
                                       else endings, _require(record, "label", source, "HellaSwag"), source)
        return "hellaswag", Item(query=query, choices=choices, gold=gold, source=source)
    if "goal" in record or "sol1" in record:
        goal = _require(record, "goal", source, "PIQA")
        choices = [_require(record, "sol1", source, "PIQA"), _require(record, "sol2", source, "PIQA")]
        choices, gold = _check_choices(choices, _require(record, "label", source, "PIQA"), source)
        return "piqa", Item(query=f"Question: {goal}\nAnswer:", choices=choices, gold=gold, source=source)
    if "mc1_targets" in record:
        targets = record["mc1_targets"]
        if not isinstance(targets, dict) or "choices" not in targets or "labels" not in targets:
            raise _fail(source, "mc1_targets must hold 'choices' and 'labels'")
        labels = targets["labels"]
        if 1 not in labels:
            raise _fail(source, "mc1_targets.labels has no 1 (no right answer)")
        choices, gold = _check_choices(targets["choices"], labels.index(1), source)
        question = _require(record, "question", source, "TruthfulQA-MC")
        return "truthfulqa_mc1", Item(query=f"{TRUTHFULQA_PRIMER}\n\nQ: {question}\nA:", choices=choices, gold=gold,
                                      source=source)
    if "answerKey" in record:
        question = _require(record, "question", source, "ARC")
        choices = record.get("choices")
        if isinstance(question, dict):  # the original ARC JSONL: {"stem", "choices": [{"text", "label"}]}
            choices = question.get("choices")
            question = question.get("stem")
            if not isinstance(choices, list):
                raise _fail(source, "missing field 'question.choices'")
            texts, labels = [c.get("text") for c in choices], [c.get("label") for c in choices]
        elif isinstance(choices, dict):  # the Hugging Face layout: {"text": [...], "label": [...]}
            texts, labels = choices.get("text"), choices.get("label")
        else:
            raise _fail(source, "missing field 'choices' (an ARC record needs it)")
        if not isinstance(texts, list) or not texts:
            raise _fail(source, "empty choice list")
        key = str(record["answerKey"])
        if key not in labels:
            raise _fail(source, f"answerKey {key!r} is not one of the choice labels {labels}")
        choices, gold = _check_choices(texts, labels.index(key), source)
        return "arc", Item(query=f"Question: {question}\nAnswer:", choices=choices, gold=gold, source=source)
    if "choices" in record:
        question = _require(record, "question", source, "multiple-choice")
        choices, gold = _check_choices(record["choices"], _require(record, "answer", source, "multiple-choice"),
                                       source)
        return "multiple_choice", Item(query=f"Question: {question}\nAnswer:", choices=choices, gold=gold,
                                       subject=record.get("subject"), source=source)
    if "test" in record and "prompt" in record:
        return "code", Item(query=str(record["prompt"]), test=str(record["test"]),
                            entry_point=str(record.get("entry_point", "")), source=source)
    if "prompt" in record or ("question" in record and ("answer" in record or "references" in record)):
        prompt = record.get("prompt", record.get("question"))
        refs = record.get("references", record.get("reference", record.get("answer")))
        if refs is None:
            raise _fail(source, "missing field 'answer' (or 'reference' / 'references') of a generation record")
        refs = [str(r) for r in refs] if isinstance(refs, list) else [str(refs)]
        if not refs:
            raise _fail(source, "empty reference list")
        return "generation", Item(query=str(prompt), references=refs, subject=record.get("subject"), source=source)
    if "text" in record:
        return "perplexity", Item(query=str(record["text"]), source=source)
    raise _fail(source, f"unrecognised record (fields {sorted(record)}); a multiple-choice record needs "
                        f"'question', 'choices', 'answer'")


def iter_jsonl(path: Path) -> Iterator[tuple[Any, str]]:
    """Each value of a task file and its ``path:line``; a bad line is a TaskFileError, an unfinished last line is
    skipped (and logged)."""
    stats = JsonlStats()
    try:
        for lineno, value in read_jsonl(path, stats=stats, strict=True, objects=False):
            yield value, f"{path}:{lineno}"
    except JsonlError as e:
        raise _fail(e.where, f"malformed JSON: {e.reason}") from None
    stats.warn(logging.getLogger(__name__))


def read_jsonl_items(path: Path) -> tuple[str, list[Item]]:
    layouts, items = set(), []
    for record, source in iter_jsonl(path):
        layout, item = parse_record(record, source)
        layouts.add(layout)
        items.append(item)
    if not items:
        raise TaskFileError(f"{path}: no records")
    if len(layouts) > 1:
        raise TaskFileError(f"{path}: records of several layouts mixed in one file ({sorted(layouts)})")
    return layouts.pop(), items


def read_mmlu_csv(path: Path, subject: str | None = None) -> list[Item]:
    """MMLU's header-less CSV rows: question, four (or more) options, answer letter."""
    subject = subject or re.sub(r"_(test|dev|val)$", "", path.stem)
    items = []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            source = f"{path}:{lineno}"
            if not row:
                continue
            if len(row) < 3:
                raise _fail(source, f"an MMLU row needs question, options and answer; got {len(row)} fields")
            question, options, answer = row[0], row[1:-1], row[-1].strip()
            if not answer:
                raise _fail(source, "missing field 'answer' (last column)")
            if not any(o.strip() for o in options):
                raise _fail(source, "empty choice list")
            _, gold = _check_choices(list(LETTERS[: len(options)]), answer, source)
            query = question.strip() + "".join(f"\n{LETTERS[i]}. {o}" for i, o in enumerate(options)) + "\nAnswer:"
            items.append(Item(query=query, choices=list(LETTERS[: len(options)]), gold=gold, subject=subject,
                              source=source))
    return items


TRUTHFULQA_PRIMER = (  # the six-question primer of TruthfulQA's paper, as lm-eval's truthfulqa_mc1 uses it
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain.")
KIND_OF_LAYOUT: dict[str, TaskKind] = {
    "hellaswag": "multiple_choice", "piqa": "multiple_choice", "truthfulqa_mc1": "multiple_choice",
    "arc": "multiple_choice", "multiple_choice": "multiple_choice", "generation": "generation", "code": "code",
    "perplexity": "perplexity", "ifeval": "ifeval",
}
MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about {subject}.\n\n"


def _dev_file(path: Path) -> Path | None:
    for candidate in (path.with_name(f"{path.stem}.dev.jsonl"), path.with_name(f"{path.stem}_dev.jsonl"),
                      path.parent / "dev.jsonl"):
        if candidate.is_file() and candidate != path:
            return candidate
    return None


def load_task(spec: str | Path, *, name: str | None = None) -> Task:
    """A task from a path: a JSONL file, a .txt file (perplexity), an MMLU CSV, or an MMLU folder.

    ``spec`` may be ``name=path`` to name the task; the default name is the file's stem (folder's name).
    """
    spec = str(spec)
    if "=" in spec and not Path(spec).exists():
        name, spec = spec.split("=", 1)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"task file not found: {path}")
    if path.is_dir():
        return _load_mmlu_dir(path, name or path.name)
    name = name or re.sub(r"[._-](test|validation|val)$", "", path.stem)
    if path.suffix == ".csv":
        items = read_mmlu_csv(path)
        dev = path.with_name(path.name.replace("_test.csv", "_dev.csv"))
        pool = read_mmlu_csv(dev) if dev != path and dev.is_file() else []
        return Task(name=name, kind="multiple_choice", items=items, fewshot_pool=pool,
                    files=[path] + ([dev] if pool else []), description=MMLU_DESCRIPTION, fewshot_sampler="first_n")
    if path.suffix in (".txt", ".md"):
        return Task(name=name, kind="perplexity", items=[Item(query=path.read_text(encoding="utf-8"),
                                                              source=f"{path}:1")], files=[path])
    layout, items = read_jsonl_items(path)
    dev = _dev_file(path)
    pool: list[Item] = []
    files = [path]
    if dev is not None:
        dev_layout, pool = read_jsonl_items(dev)
        if dev_layout != layout:
            raise TaskFileError(f"{dev}: dev split layout {dev_layout!r} differs from {path}'s {layout!r}")
        files.append(dev)
    return Task(name=name, kind=KIND_OF_LAYOUT[layout], items=items, fewshot_pool=pool, files=files)


def _load_mmlu_dir(path: Path, name: str) -> Task:
    """MMLU's release layout: ``test/<subject>_test.csv`` and ``dev/<subject>_dev.csv`` (or all in one folder)."""
    tests = sorted(path.rglob("*_test.csv"))
    if not tests:
        raise FileNotFoundError(f"{path}: no <subject>_test.csv files (MMLU layout) inside")
    devs = sorted(path.rglob("*_dev.csv"))
    items = [item for f in tests for item in read_mmlu_csv(f)]
    pool = [item for f in devs for item in read_mmlu_csv(f)]
    return Task(name=name, kind="multiple_choice", items=items, fewshot_pool=pool, files=tests + devs,
                description=MMLU_DESCRIPTION, fewshot_sampler="first_n")
