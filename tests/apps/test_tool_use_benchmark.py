"""benchmarks/tool_use.py's data: an honest held-out set, conversations as the Agent sends them, a digit split."""

from __future__ import annotations

import argparse
import json
import random
import re

import pytest

from groundup.finetune.data import chat_segments
from groundup.tokenizer.chat import render_chat


@pytest.fixture(scope="module")
def bench(import_benchmark):
    return import_benchmark("tool_use")


def args(**over):
    base = dict(seed=3, filler=0.5, composed=0.5, prose=0.0, train=300, full=240, direct=50, held_out=40, new_templates=0.25, per_conversation=3,
                short_per_conversation=2, tokenizer_conversations=60, pattern="digits")
    return argparse.Namespace(**{**base, **over})


def test_held_out_problems_share_no_numbers_names_or_all_wordings_with_training(bench):
    train, held_out = bench.make_problems(args())
    assert len(train) == 350 and len(held_out) == 40
    assert not {(p["op"], tuple(p["numbers"])) for p in train} & {(p["op"], tuple(p["numbers"])) for p in held_out}
    new_names = {n for n, _ in bench.NEW_NAMES}
    made_up = {n for n, _ in bench.made_up_names()}
    assert len(made_up) == 300 and not made_up & new_names
    assert any(n in p["question"].split() for p in train for n in made_up)  # training draws from them too
    assert not any(n in p["question"].split() for p in train for n in new_names)
    new_wordings = [re.compile(re.sub(r"\\{\w+\\}", ".+?", re.escape(w)) + "$") for _, w, _ in bench.NEW_TEMPLATES]
    assert sum(p["wording"] == "new" for p in held_out) == 10
    assert not any(w.match(p["question"]) for p in train for w in new_wordings)
    assert all(any(w.match(p["question"]) for w in new_wordings) for p in held_out if p["wording"] == "new")
    for p in held_out:
        assert int(bench.calc(p["expression"])) == p["answer"]


def test_composed_wordings_are_many_give_the_numbers_in_order_and_avoid_the_new_wordings_words(bench):
    rng, names = random.Random(0), bench.TRAIN_NAMES
    problems = [bench.composed_problem(rng, names) for _ in range(400)]
    assert {p["op"] for p in problems} == {"add", "sub", "mul", "two"}
    assert len({re.sub(r"\d+", "N", p["question"]) for p in problems}) > 300  # nearly every one a new wording
    new_words = {"brought", "used", "over", "fills", "crate", "crates", "lent", "library", "neighbour"}
    for p in problems:
        assert re.findall(r"\d+", p["expression"]) == re.findall(r"\d+", p["question"])  # the question's order
        assert int(bench.calc(p["expression"])) == p["answer"]
        assert p["expression"].count("*") == (p["op"] == "mul") and p["expression"].count("-") == (p["op"] in ("sub", "two"))
        assert not new_words & set(re.findall(r"[a-z]+", p["question"].lower()))
    for op in ("add", "sub", "mul", "two"):  # numbers of several lengths, so that a length does not tell the operation
        for signs in ("+-", "++", "--", "-+"):
            drawn = [bench.varied_numbers(rng, op, signs) for _ in range(300)]
            assert len({len(str(n)) for nums in drawn for n in nums}) >= 3
            p = bench.composed_problem(rng, names, drawn[0], op, signs)
            assert p["answer"] > 0 and re.sub(r"\d+", "", p["expression"]) == {"add": "+", "sub": "-", "mul": "*"}.get(op, signs)
    train, _ = bench.make_problems(args(composed=0.5, filler=0.0))
    assert 0.35 < sum(not any(re.fullmatch(re.sub(r"\\{\w+\\}", ".+?", re.escape(w)), p["question"])
                              for _, w, _ in bench.TEMPLATES + bench.EXTRA_TEMPLATES) for p in train) / len(train) < 0.65


def test_docstring_sentences_are_prose_without_digits_code_or_the_new_wordings_words(bench):
    from groundup.corpus import stdlib_files

    names = {"queue.py", "textwrap.py", "sched.py", "shlex.py", "heapq.py", "glob.py", "fnmatch.py", "calendar.py"}
    sentences = bench.docstring_sentences([f for f in stdlib_files() if f.name in names])
    assert len(sentences) > 20 and len(set(sentences)) == len(sentences)
    for s in sentences:
        assert s[0].isupper() and s.endswith(".") and 5 <= len(s.split()) <= 16 and s.isascii()
        assert not re.search(r"[\d(){}\[\]=_`]", s)
        assert not any(w.startswith(bench.NEW_WORDS) for w in re.findall(r"[a-z]+", s.lower()))
    rng = random.Random(1)
    p = bench.composed_problem(rng, bench.TRAIN_NAMES, (437, 285), "add", prose=["Return the value."])
    while "Return the value." not in p["question"]:  # the extra sentence comes half the time
        p = bench.composed_problem(rng, bench.TRAIN_NAMES, (437, 285), "add", prose=["Return the value."])
    assert p["expression"] == "437+285"


def test_a_training_conversation_holds_several_problems_each_call_and_answer_trained(bench):
    train, _ = bench.make_problems(args())
    system, specs = bench.agent_prompt()
    conversation = bench.tool_conversation(train[:3], system, specs)
    messages = conversation["messages"]
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant", "tool", "assistant"] * 3
    # what the Agent sends for the first task is the rendering's beginning, as it is at test time
    first = render_chat(messages[:2], tools=specs, add_generation_prompt=True)
    assert render_chat(messages, tools=specs).startswith(first)
    trained = [text for text, is_trained in chat_segments(messages, None, tools=specs) if is_trained]
    assert len(trained) == 6
    for k, p in enumerate(train[:3]):
        assert json.dumps({"expression": p["expression"]}) in trained[2 * k]
        assert trained[2 * k + 1] == f"The answer is {p['answer']}.<|im_end|>"


def test_a_short_conversation_is_the_full_one_without_its_system_turn(bench):
    train, _ = bench.make_problems(args())
    system, specs = bench.agent_prompt()
    full = bench.tool_conversation(train[:2], system, specs)["messages"]
    short = bench.short_conversation(train[:2])["messages"]
    assert short == full[1:]
    trained = [text for text, is_trained in chat_segments(short, None) if is_trained]
    assert trained == [text for text, is_trained in chat_segments(full, None, tools=specs) if is_trained]


def test_the_digit_split_makes_every_digit_a_token(bench, tmp_path):
    from groundup.tokenizer import Tokenizer
    from groundup.tokenizer import run as tokenizer_stage

    a = args(pattern="digits")
    train, held_out = bench.make_problems(a)
    paths = bench.write_data(tmp_path, train, held_out, a)
    records = [json.loads(x) for x in paths["sft"].read_text().splitlines()]
    assert len(records) == 80 + 50  # 240 problems in full, three to a conversation, and 50 without the tool
    short = [json.loads(x) for x in paths["short"].read_text().splitlines()]
    assert len(short) == 150  # all 300 problems, two to a conversation, with no system turn and no tool listing
    assert all("tools" not in r and r["messages"][0]["role"] == "user" for r in short)
    out = tokenizer_stage.run(tokenizer_stage.Config(data=str(paths["corpus"]), out=tmp_path / "tok", vocab_size=400,
                                                     pattern=a.pattern, val_fraction=0.0))
    tok = Tokenizer.from_file(out)
    pieces = [tok.decode([i]) for i in tok.encode('{"expression": "437+285"} has 1105 marbles')]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("437285") + list("1105")


def test_calc_evaluates_arithmetic_and_refuses_anything_else(bench):
    assert bench.calc("437+285") == "722"
    assert bench.calc("(12 - 4) * 3") == "24"
    assert bench.calc("7/2") == "3.5" and bench.calc("8/2") == "4"
    for bad in ("__import__('os')", "2**10", "x+1", "1/0", "1+"):
        with pytest.raises(ValueError):
            bench.calc(bad)
