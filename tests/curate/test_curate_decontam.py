"""Decontamination: every planted 13-gram overlap is found, a clean set gives none, drops are reported per file."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest

from groundup.curate import run as curate
from groundup.curate.decontam import (
    Decontaminate,
    batch_ngram_hashes,
    build_index,
    ngram_hashes,
    overlap_report,
    word_hashes,
)
from groundup.curate.text import Document


def vocabulary(seed: int, size: int = 4000) -> list[str]:
    rng = random.Random(seed)
    return sorted({"".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
                   for _ in range(size)})


WORDS = vocabulary(0)


def sentence_text(rng: random.Random, words: int) -> str:
    out = []
    for i in range(words):
        w = rng.choice(WORDS)
        out.append(w.capitalize() if i % 9 == 0 else w)
        if i % 9 == 8:
            out[-1] += rng.choice([".", ",", ";", "!"])
    return " ".join(out)


def write_eval(path, rng: random.Random, items: int, words: int = 40) -> list[str]:
    texts = [sentence_text(rng, words) for _ in range(items)]
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({"question": t, "choices": ["yes", "no"], "answer": 0}) + "\n")
    return texts


def plant(rng: random.Random, item: str, n: int = 13) -> str:
    """A training document holding ``n`` consecutive words of ``item``, re-cased and re-punctuated."""
    words = item.replace(".", " ").replace(",", " ").replace(";", " ").replace("!", " ").split()
    start = rng.randint(0, len(words) - n)
    span = " -- ".join(w.upper() if k % 2 else w for k, w in enumerate(words[start:start + n]))
    return f"{sentence_text(rng, rng.randint(20, 200))} ({span}) {sentence_text(rng, rng.randint(0, 200))}"


def test_word_and_ngram_hashes_normalize_and_batch_equals_single():
    words, starts = word_hashes("River the river, RIVER! café")
    assert words[0] == words[2] == words[3] != words[1] and words.size == 5 and starts[0] == 0
    texts = [sentence_text(random.Random(i), 30 + i) for i in range(12)] + ["", "too short"]
    grams, text_of = batch_ngram_hashes(texts)
    assert np.array_equal(grams, np.concatenate([ngram_hashes(t) for t in texts]))
    assert np.array_equal(text_of, np.repeat(np.arange(len(texts)), [max(0, len(t.split()) - 12) for t in texts]))


def test_every_planted_overlap_is_found_and_a_clean_set_gives_none(tmp_path):
    rng = random.Random(1)
    items = write_eval(tmp_path / "eval.jsonl", rng, 300)
    step = Decontaminate(files=[str(tmp_path / "eval.jsonl")])
    planted = [Document(plant(rng, rng.choice(items)), "x", i) for i in range(200)]
    clean = [Document(sentence_text(rng, rng.randint(13, 400)), "y", i) for i in range(500)]
    assert all(not keep for keep, _ in step.filter_batch(planted))  # recall 1.0
    assert all(keep for keep, _ in step.filter_batch(clean))  # no false positive
    assert [step.filter(d) for d in planted[:20]] == step.filter_batch(planted[:20])
    # twelve consecutive words of an item are not an overlap
    twelve = " ".join(items[0].split()[:12])
    assert step.filter(Document(f"{sentence_text(rng, 50)} {twelve} {sentence_text(rng, 50)}", "z", 0))[0]


def test_overlaps_are_reported_per_evaluation_file(tmp_path):
    rng = random.Random(2)
    a = write_eval(tmp_path / "a.jsonl", rng, 50)
    b = write_eval(tmp_path / "b.jsonl", rng, 80)
    (tmp_path / "c.txt").write_text("one two three\n\n" + sentence_text(rng, 30) + "\n")
    files = [str(tmp_path / n) for n in ("a.jsonl", "b.jsonl", "c.txt")]
    index = build_index(files)
    docs = [plant(rng, a[i]) for i in range(5)] + [plant(rng, b[i % 3]) for i in range(7)]
    docs += [sentence_text(rng, 100) for _ in range(30)]
    report = overlap_report(docs, index)
    assert report[files[0]] == {"items": 50, "short_items": 0, "documents": 5, "items_hit": 5}
    assert report[files[1]] == {"items": 80, "short_items": 0, "documents": 7, "items_hit": 3}
    assert report[files[2]] == {"items": 2, "short_items": 1, "documents": 0, "items_hit": 0}
    step = Decontaminate(files=files)
    reasons = [r for _, r in step.filter_batch([Document(t, "x", 0) for t in docs[:12]])]
    assert reasons == ["13-gram overlap with a.jsonl"] * 5 + ["13-gram overlap with b.jsonl"] * 7


def test_bad_evaluation_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="evaluation file not found"):
        Decontaminate(files=[str(tmp_path / "missing.jsonl")])
    (tmp_path / "bad.jsonl").write_text('{"q": "fine"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: evaluation item is not JSON"):
        Decontaminate(files=[str(tmp_path / "bad.jsonl")])


def test_curate_decontaminate_flag_drops_and_counts_per_file(tmp_path):
    rng = random.Random(3)
    items = write_eval(tmp_path / "mmlu.jsonl", rng, 40)
    texts = [plant(rng, items[i]) for i in range(4)] + [sentence_text(rng, 150) for _ in range(6)]
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "train.jsonl", "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    cfg = curate.Config(input=[str(tmp_path / "in")], out=tmp_path / "out", workers=1,
                        recipe=curate.RecipeConfig(steps=["unicode_fix"]),
                        decontaminate=[str(tmp_path / "mmlu.jsonl")])
    out = curate.run(cfg)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["steps"]["decontaminate"]["dropped"] == {"13-gram overlap with mmlu.jsonl": 4}
    assert [row["step"] for row in stats["funnel"]][-2:] == ["decontaminate", "dedup"]
    kept = pq.read_table(next((out / "shards").glob("*.parquet"))).column("text").to_pylist()
    assert sorted(kept) == sorted(texts[4:])


def test_lookup_finds_every_indexed_ngram_and_nothing_else(tmp_path):
    """The bitmap and the bucket directory: every hash of the index is found at its own position (buckets
    hold one, several or none), hashes not in it are not, in any order and with repeats."""
    write_eval(tmp_path / "eval.jsonl", random.Random(3), 400)
    index = build_index([tmp_path / "eval.jsonl"])
    counts = np.diff(index._offsets)
    assert counts.max() >= 3 and (counts == 0).any()  # the walk meets long buckets and empty ones
    order = np.random.default_rng(0).permutation(index.hashes.size)
    at, which = index.lookup(index.hashes[order])
    assert np.array_equal(np.sort(which), np.arange(order.size)) and np.array_equal(at, order[which])
    others = np.random.default_rng(1).integers(0, 2**63, 50_000, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    others = others[~np.isin(others, index.hashes)]
    grams = np.concatenate([others, index.hashes[:5], index.hashes[:5]])
    at, which = index.lookup(grams)
    assert np.array_equal(which, others.size + np.arange(10)) and np.array_equal(at, np.tile(np.arange(5), 2))
