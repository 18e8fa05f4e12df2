"""Annotation through a local fake OpenAI-compatible server, resume after SIGKILL, the scorer and the score step."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fake_llm import EDU_WORDS, FakeLLM, rule_score

from groundup.curate import annotate, scorer
from groundup.curate import run as curate
from groundup.curate.annotate import parse_score, read_annotations

FILLER = ["river", "garden", "window", "market", "station", "engine", "village", "library", "doctor", "winter", "mountain", "letter", "kitchen", "bridge", "forest", "harbor", "farmer", "student", "painter", "museum", "island", "valley", "journey", "castle", "bottle", "machine", "meadow", "candle", "theater", "orchard", "sailor", "tower", "lantern", "basket", "pocket", "ladder", "carpet", "mirror"]


def document(rng: random.Random, score: int) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(40, 120))]
    for w in rng.sample(EDU_WORDS, score):
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words)), w)
    return " ".join(words)


def write_docs(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_parse_score_is_robust():
    assert parse_score("Reasons...\nEducational score: 4") == 4
    assert parse_score("**Educational Score:** 3\n") == 3
    assert parse_score("I'd say 2/5 overall.") == 2
    assert parse_score("score: 1 at first, but on reflection Educational score: 5") == 5
    assert parse_score(" 3 ") == 3
    assert parse_score("A lovely page about 1990s music.") is None
    assert parse_score("Educational score: 9") is None


def test_annotate_counts_prose_500s_and_timeouts(tmp_path):
    rng = random.Random(0)
    texts = [document(rng, i % 6) for i in range(10)]
    texts += ["PROSE " + document(rng, 2), "FAIL500 " + document(rng, 1), "SLOW " + document(rng, 3)]
    src = write_docs(tmp_path / "in" / "docs.jsonl", texts)
    with FakeLLM(slow_seconds=1.5) as server:
        cfg = annotate.Config(input=[str(src)], out=tmp_path / "ann", url=server.url, concurrency=3, retries=2,
                              backoff_seconds=0.01, timeout_seconds=0.5, price_per_million_input_tokens=2.0)
        out = annotate.run(cfg)
    records = list(read_annotations(out / "annotations.jsonl"))
    assert sorted(r["text"] for r in records) == sorted(t for t in texts if not t.startswith("PROSE"))
    assert all(r["score"] == rule_score(r["text"]) for r in records)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["failed"] == {"no score in the reply": 1} and stats["annotated"] == 12
    assert stats["retries"] == 2 and stats["requests"] == 15  # the 500 and the timeout asked again, once each
    assert stats["prompt_tokens"] == 1300 and stats["cost"] == pytest.approx(1300 * 2.0 / 1e6)
    assert any("docs.jsonl:11: no score" in e for e in stats["failed_examples"])


def test_resume_after_sigkill_asks_for_no_recorded_document_again(tmp_path):
    rng = random.Random(1)
    texts = [document(rng, i % 6) + f" n{i}" for i in range(60)]
    src = write_docs(tmp_path / "in" / "docs.jsonl", texts)
    out = tmp_path / "ann"
    with FakeLLM(delay=0.05) as server:
        code = (f"from groundup.curate import annotate; annotate.run(annotate.Config(input=[{str(src)!r}], "
                f"out={str(out)!r}, url={server.url!r}, concurrency=2))")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        child = subprocess.Popen([sys.executable, "-c", code], env=env)
        deadline = time.time() + 60
        while time.time() < deadline and len(list(read_annotations(out / "annotations.jsonl"))) < 10:
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
        first = {r["text"] for r in read_annotations(out / "annotations.jsonl")}
        assert 10 <= len(first) < 60
        seen_before = dict(server.seen)
        annotate.run(annotate.Config(input=[str(src)], out=out, url=server.url, concurrency=2))
    records = list(read_annotations(out / "annotations.jsonl"))
    assert sorted(r["text"] for r in records) == sorted(texts)  # none missing, none twice
    asked_again = {t for t, n in server.seen.items() if n > seen_before.get(t, 0) and t in first}
    assert not asked_again  # a recorded document is never asked again
    twice = [t for t, n in server.seen.items() if n > 1]
    assert len(twice) <= 2  # only the requests in flight at the kill (concurrency 2) were asked again


def _annotated_corpus(tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    rng = random.Random(2)
    texts = [document(rng, rng.randint(0, 5)) + f" d{i}" for i in range(n)]
    src = write_docs(tmp_path / "in" / "docs.jsonl", texts)
    with FakeLLM() as server:
        annotate.run(annotate.Config(input=[str(src)], out=tmp_path / "ann", url=server.url, concurrency=4))
    return tmp_path / "ann", texts


def test_scorer_learns_the_annotators_rule_and_the_score_step_keeps_scores(tmp_path):
    ann, texts = _annotated_corpus(tmp_path, 600)
    out = scorer.run(scorer.Config(annotations=[str(ann)], out=tmp_path / "scorer", threshold=3))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["held_out_documents"] > 60 and metrics["f1"] >= 0.8, metrics
    c = metrics["confusion"]
    assert sum(c.values()) == metrics["held_out_documents"]
    assert sum(map(sum, metrics["confusion_rounded"]["counts"])) == metrics["held_out_documents"]
    # the score step: scores in the Parquet output, the step in the funnel
    rng = random.Random(9)
    fresh = [document(rng, s) + f" f{i}" for i, s in enumerate([0, 1, 5, 5, 4, 0, 5, 1])]
    write_docs(tmp_path / "curate_in" / "new.jsonl", fresh)
    result = curate.run(curate.Config(input=[str(tmp_path / "curate_in")], out=tmp_path / "curated", workers=1,
                                      recipe=curate.RecipeConfig(steps=[{"score": {"scorer": str(out)}}])))
    stats = json.loads((result / "stats.json").read_text())
    assert [row["step"] for row in stats["funnel"]] == ["read", "score", "dedup"]
    assert stats["steps"]["score"]["dropped"] == {"score under 3": 4}
    rows = pq.read_table(next((result / "shards").glob("*.parquet"))).to_pylist()
    assert sorted(r["text"] for r in rows) == sorted(t for t in fresh if rule_score(t) >= 3)
    assert all(r["score"] >= 3 for r in rows)


def test_bad_scorer_dir_and_too_few_annotations_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a scorer dir"):
        scorer.load_scorer(tmp_path)
    with pytest.raises(FileNotFoundError, match="no annotations at"):
        scorer.run(scorer.Config(annotations=[str(tmp_path / "none")], out=tmp_path / "s"))
