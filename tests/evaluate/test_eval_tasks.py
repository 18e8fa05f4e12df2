"""Task files: the common layouts, k-shot prompts from a dev split, and bad input named by file and line."""

from __future__ import annotations

import json

import pytest

from groundup.evaluate.tasks import TaskFileError, load_task


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


GOOD = {"question": "Which is red?", "choices": ["sky", "apple"], "answer": 1}


@pytest.mark.parametrize("record, message", [
    ({"question": "q", "answer": 0, "choices": []}, "empty choice list"),
    ({"question": "q", "choices": ["a", "b"]}, "missing field 'answer'"),
    ({"choices": ["a", "b"], "answer": 1}, "missing field 'question'"),
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, "answer index 2 out of range for 2 choices"),
    ({"question": "q", "choices": ["a", "b"], "answer": -1}, "out of range"),
    ({"question": "q", "choices": ["a", "b"], "answer": "c"}, "neither an index nor one of the choices"),
    ({"ctx_a": "x", "ctx_b": "y", "activity_label": "z", "endings": ["a"], "label": 3}, "out of range"),
    ({"goal": "g", "sol1": "a", "label": 0}, "missing field 'sol2'"),
    ({"question": {"stem": "q", "choices": []}, "answerKey": "A"}, "empty choice list"),
    ('{"question": "q", "choices": ["a"', "malformed JSON"),
])
def test_bad_records_name_file_and_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / "task.jsonl", [GOOD, GOOD, record])
    with pytest.raises(TaskFileError) as err:
        load_task(path)
    assert f"{path}:3" in str(err.value)
    assert message in str(err.value)


def test_mmlu_csv_bad_answer_names_line(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "anatomy_test.csv").write_text('"q1",a,b,c,d,A\n"q2",a,b,c,d,E\n')
    with pytest.raises(TaskFileError, match=r"anatomy_test.csv:2: .*out of range|anatomy_test.csv:2: .*neither"):
        load_task(tmp_path)


def test_layouts_are_recognised(tmp_path):
    hs = write_jsonl(tmp_path / "hellaswag.jsonl", [{"ctx_a": "A man is sitting.", "ctx_b": "he [title] smiles",
                                                     "activity_label": "Sitting", "endings": ["a", " b  c"],
                                                     "label": "1"}])
    arc = write_jsonl(tmp_path / "arc.jsonl", [
        {"question": "Why?", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "B"},
        {"question": {"stem": "How?", "choices": [{"text": "p", "label": "1"}, {"text": "q", "label": "2"}]},
         "answerKey": "1"}])
    piqa = write_jsonl(tmp_path / "piqa.jsonl", [{"goal": "Open a jar", "sol1": "twist", "sol2": "hit", "label": 0}])
    tqa = write_jsonl(tmp_path / "tqa.jsonl", [{"question": "Is it?", "mc1_targets": {"choices": ["no", "yes"],
                                                                                     "labels": [0, 1]}}])
    gen = write_jsonl(tmp_path / "gen.jsonl", [{"prompt": "Say hi:", "answer": "hi"}])
    code = write_jsonl(tmp_path / "code.jsonl", [{"prompt": "def f():\n", "test": "def check(f): pass",
                                                  "entry_point": "f"}])
    t = load_task(hs)
    assert t.kind == "multiple_choice" and t.items[0].gold == 1
    assert t.items[0].query == "Sitting: A man is sitting. He. smiles"  # lm-eval's preprocess
    assert t.items[0].choices == ["a", "b c"]
    t = load_task(arc)
    assert [i.gold for i in t.items] == [1, 0] and t.items[1].query == "Question: How?\nAnswer:"
    assert load_task(piqa).items[0].choices == ["twist", "hit"]
    tqa_item = load_task(tqa).items[0]
    assert tqa_item.gold == 1 and tqa_item.query.endswith("Barcelona, Spain.\n\nQ: Is it?\nA:")
    assert load_task(gen).kind == "generation"
    assert load_task(code).kind == "code"


def test_mmlu_folder_with_subjects_and_first_n_kshot(tmp_path):
    for split in ("test", "dev"):
        (tmp_path / split).mkdir()
        for subject in ("anatomy", "world_history"):
            rows = [f'"{subject} {split} q{i}?",w{i},x{i},y{i},z{i},{"ABCD"[i % 4]}' for i in range(6)]
            (tmp_path / split / f"{subject}_{split}.csv").write_text("\n".join(rows) + "\n")
    task = load_task(tmp_path)
    assert len(task.items) == 12 and len(task.fewshot_pool) == 12
    assert {i.subject for i in task.items} == {"anatomy", "world_history"}
    item = task.items[7]
    zero = task.context(item)
    assert zero.startswith("The following are multiple choice questions (with answers) about world history.\n\n")
    assert zero.endswith("world_history test q1?\nA. w1\nB. x1\nC. y1\nD. z1\nAnswer:")
    three = task.contexts(task.items, num_fewshot=3, seed=5)[7]
    assert three == task.contexts(task.items, num_fewshot=3, seed=6)[7]  # first_n: the seed plays no part
    assert three.count("Answer:") == 4 and "anatomy" not in three.split("\n\n", 1)[1]  # same subject's dev items
    # lm-eval's MMLU sampler (first_n): the subject's first dev items, in file order, for every item
    shots = three.split("\n\n")[1:4]
    assert [s.split("?")[0] for s in shots] == [f"world_history dev q{i}" for i in range(3)]
    assert shots[1].endswith("Answer: B")


def test_generic_jsonl_kshot_draws_like_lm_eval_default_sampler(tmp_path):
    import random

    path = write_jsonl(tmp_path / "qa.jsonl", [dict(GOOD, question=f"q{i}?") for i in range(4)])
    write_jsonl(tmp_path / "qa.dev.jsonl", [{"question": f"dev{i}?", "choices": ["x", "y"], "answer": i % 2}
                                            for i in range(8)])
    task = load_task(path)
    assert task.fewshot_sampler == "random"
    two = task.contexts(task.items, num_fewshot=2, seed=5)
    assert two == task.contexts(task.items, num_fewshot=2, seed=5)  # seeded: reproducible
    assert two != task.contexts(task.items, num_fewshot=2, seed=6)
    rnd = random.Random(5)  # one generator for the task, consumed item after item (lm-eval's ContextSampler)
    for context in two:
        shots = rnd.sample(range(8), 2)
        assert [line for line in context.split("\n") if line.startswith("Question: dev")] == \
            [f"Question: dev{i}?" for i in shots]


def test_generic_jsonl_kshot_needs_a_dev_split(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [GOOD])
    task = load_task(path)
    with pytest.raises(ValueError, match="dev split has only 0"):
        task.context(task.items[0], num_fewshot=1)
    write_jsonl(tmp_path / "qa.dev.jsonl", [{"question": "Which is blue?", "choices": ["sky", "apple"],
                                              "answer": 0}])
    task = load_task(path)
    assert task.context(task.items[0], num_fewshot=1) == \
        "Question: Which is blue?\nAnswer: sky\n\nQuestion: Which is red?\nAnswer:"
