"""groundup synth through the fake OpenAI-compatible server: parsing, filters, dedup, decontamination, resume."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import zlib

import pytest
from curate_helpers import english_text
from fake_llm import FakeLLM

from groundup import cli
from groundup.curate import synth
from groundup.curate.dedup import DedupConfig
from groundup.finetune.data import DataStats, parse_conversation, read_jsonl

EVAL_ITEM = ("The committee of astronomers in Lisbon measured the slow orbit of a distant comet across seven "
             "winter nights in a row")
GERMAN = ["Der alte Mann geht jeden Morgen mit seinem Hund durch den dunklen Wald.",
          "Die Kinder spielen im Garten, während ihre Mutter in der Küche das Mittagessen kocht.",
          "Im Sommer fahren wir oft an den See, weil das Wasser dort besonders klar und warm ist.",
          "Nach der Schule müssen die Schüler ihre Hausaufgaben machen und danach dürfen sie spielen.",
          "Das Rathaus der kleinen Stadt wurde vor vielen Jahren aus rotem Stein gebaut."]
CLEAN = ["rivers", "volcanoes", "fractions", "the water cycle"]
TOPICS = CLEAN[:1] + ["DUP", "NEAR", "GERMAN", "SHORT", "CONTAM", "BROKEN", "FAIL500 tides"] + CLEAN[1:]


def body_text(kind: str, topic: str, n: int) -> str:
    return english_text(zlib.crc32(f"{kind}|{topic}|{n}".encode()), 8)


def fake_reply(prompt: str) -> str:
    """What the fake generator writes: clean prose per (kind, topic, n), and the troublemakers by topic."""
    kind = "instruction" if prompt.startswith("Write one instruction") else "qa" if "student" in prompt else "textbook"
    topic = re.search(r"about (.+?)(?:, and (?:an|a) |: clear)", prompt).group(1)
    n = int(re.search(r"number (\d+)", prompt).group(1))
    text = body_text(kind, "rivers" if topic in ("DUP", "NEAR") else topic, n)
    if topic == "NEAR":  # one word changed in the middle
        words = text.split(" ")
        words[len(words) // 2] = "zebra"
        text = " ".join(words)
    elif topic == "GERMAN":
        text = " ".join(random.Random(n).sample(GERMAN * 3, 12))
    elif topic == "SHORT":
        text = "Tiny."
    elif topic == "CONTAM":
        text = text + " " + EVAL_ITEM + "."
    if kind == "textbook":
        return text
    if topic == "BROKEN":
        return "Sure! Here is something: " + text
    first, second = synth.PAIRS[kind]
    question = "Why?" if topic == "SHORT" else f"Tell me about {'rivers' if topic in ('DUP', 'NEAR') else topic}."
    return f"**{first}:** {question}\n{second}: {text}"


@pytest.fixture
def eval_file(tmp_path):
    path = tmp_path / "eval" / "eval.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps({"question": EVAL_ITEM, "answer": "a comet"}) + "\n")
    return path


def config(out, url, eval_file, **kw):
    return synth.Config(topics=TOPICS, out=out, url=url, decontaminate=[str(eval_file)], concurrency=3,
                        backoff_seconds=0.01, samples_per_topic=2, **kw)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_drop_is_counted_and_the_outputs_are_the_training_formats(tmp_path, eval_file):
    with FakeLLM(reply=fake_reply) as server:
        out = synth.run(config(tmp_path / "s", server.url, eval_file))
        stats = json.loads((out / "stats.json").read_text())
        asked = sum(server.seen.values())
        # a re-run asks for nothing and writes the same files
        first = {name: (out / name).read_bytes() for name in ("chat.jsonl", "text.jsonl")}
        synth.run(config(tmp_path / "s", server.url, eval_file))
        assert sum(server.seen.values()) == asked
    assert {name: (out / name).read_bytes() for name in first} == first
    again = json.loads((out / "stats.json").read_text())
    assert again["already_generated"] == stats["replies"] and again["requests"] == 0
    assert again["dropped"] == stats["dropped"]
    per_kind = 3 * 2  # three kinds, two samples each
    assert stats["requests_planned"] == len(TOPICS) * per_kind and stats["failed"] == {}
    assert stats["retries"] == per_kind  # each FAIL500 request answered 500 once, then retried
    assert stats["dropped"] == {"exact_duplicate": per_kind, "near_duplicate": per_kind, "other_language": per_kind,
                                "too_short": per_kind, "13-gram overlap with eval.jsonl": per_kind,
                                "unparsable": 2 * 2}  # BROKEN's instruction and qa (its textbook is prose)
    chat, text = read(out / "chat.jsonl"), read(out / "text.jsonl")
    kept_topics = set(CLEAN) | {"FAIL500 tides"}
    assert {(r["kind"], r["topic"], r["n"]) for r in chat} == {(k, t, n) for k in ("instruction", "qa")
                                                               for t in kept_topics for n in (0, 1)}
    assert {r["topic"] for r in text} == kept_topics | {"BROKEN"} and all(r["kind"] == "textbook" for r in text)
    assert stats["kept"] == {"instruction": 10, "qa": 10, "textbook": 12}
    rivers = next(r for r in chat if r["topic"] == "rivers" and r["kind"] == "qa" and r["n"] == 0)
    assert rivers["messages"] == [{"role": "user", "content": "Tell me about rivers."},
                                  {"role": "assistant", "content": body_text("qa", "rivers", 0)}]
    assert all(r["text"] == body_text("textbook", r["topic"], r["n"]) for r in text)
    # fine-tuning reads the chat records as they are
    stats_ft = DataStats()
    assert len(read_jsonl(out / "chat.jsonl", parse_conversation, stats_ft)) == len(chat) and not stats_ft.errors
    assert stats["prompt_tokens"] == 100 * len(TOPICS) * per_kind  # the fake's usage, counted once per reply


def test_resume_after_sigkill_asks_for_nothing_recorded_and_writes_the_same(tmp_path, eval_file):
    with FakeLLM(reply=fake_reply, delay=0.05) as server:
        straight = synth.run(config(tmp_path / "straight", server.url, eval_file))
        server.seen.clear()
        out = tmp_path / "killed"
        code = (f"from groundup.curate import synth; synth.run(synth.Config(topics={TOPICS!r}, out={str(out)!r}, "
                f"url={server.url!r}, decontaminate=[{str(eval_file)!r}], concurrency=3, backoff_seconds=0.01, "
                "samples_per_topic=2))")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        child = subprocess.Popen([sys.executable, "-c", code], env=env)
        deadline = time.time() + 60
        while time.time() < deadline and len(synth.read_generations(out / "generations.jsonl")) < 15:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        recorded = synth.read_generations(out / "generations.jsonl")
        assert 15 <= len(recorded) < len(TOPICS) * 6
        before = dict(server.seen)
        synth.run(config(out, server.url, eval_file))
    again = [p for p, count in server.seen.items() if count > before.get(p, 0) and before.get(p, 0) > 0]
    assert len(again) <= 3 + 1  # only the requests in flight at the kill (concurrency 3), and FAIL500's retry
    for name in ("chat.jsonl", "text.jsonl"):
        assert (out / name).read_bytes() == (straight / name).read_bytes()


def test_parse_pair_and_duplicates():
    assert synth.parse_pair("Question: What?\nAnswer: That.", "Question", "Answer") == ("What?", "That.")
    assert synth.parse_pair("## **Instruction**: Do it\nplease\n**Response:** Done\nmore", "Instruction",
                            "Response") == ("Do it\nplease", "Done\nmore")
    assert synth.parse_pair("Question: What?\nAnswer:", "Question", "Answer") is None
    assert synth.parse_pair("What? That.", "Question", "Answer") is None
    texts = [english_text(1), english_text(2), english_text(1).upper(), english_text(2) + " Indeed.", ""]
    assert synth.duplicates(texts, DedupConfig()) == {2: "exact_duplicate", 3: "near_duplicate"}
    assert synth.duplicates(texts, DedupConfig(near=False)) == {2: "exact_duplicate"}


def test_templates_topics_and_bad_settings(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "qa.jinja").write_text("Q about {{ topic }} #{{ n }}")
    topics = tmp_path / "topics.txt"
    topics.write_text("alpha\n\n{\"topic\": \"beta\"}\nalpha\n")
    assert synth.read_topics(str(topics)) == ["alpha", "beta"]
    cfg = synth.Config(topics=str(topics), kinds=["qa"], template_dir=tmp_path / "t", samples_per_topic=2)
    assert [t.prompt for t in synth.plan_tasks(cfg, synth.read_topics(cfg.topics))] == \
        ["Q about alpha #0", "Q about alpha #1", "Q about beta #0", "Q about beta #1"]
    (tmp_path / "t" / "qa.jinja").write_text("Q about {{ topik }}")
    with pytest.raises(ValueError, match="the qa template cannot be rendered: 'topik' is undefined"):
        synth.plan_tasks(cfg, ["alpha"])
    with pytest.raises(ValueError, match="synth: kinds must be some of instruction, qa, textbook"):
        synth.Config(kinds=["poem"])
    with pytest.raises(ValueError, match="synth: no seed topics"):
        synth.run(synth.Config(topics=[], out=tmp_path / "o"))
    (tmp_path / "bad.txt").write_text('{"name": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.txt:1: a JSON line without a `topic`"):
        synth.read_topics(str(tmp_path / "bad.txt"))


def test_cli_runs_synth_and_counts_an_unreachable_endpoint(tmp_path):
    # nothing listens on the port: every request fails after its retries, counted, and no output is lost
    assert cli.main(["synth", "--topics", '["rivers"]', "--out", str(tmp_path / "o"), "--url",
                     "http://127.0.0.1:9/v1", "--retries", "1", "--backoff_seconds", "0.01", "--languages",
                     "null"]) == 0
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["failed"] == {"connection after 2 tries": 3} and stats["replies"] == 0
    assert (tmp_path / "o" / "chat.jsonl").read_text() == ""
