import json
import re

import pytest
from fake_openai import last_user

from groundup.apps import ChatModel, GateError, Step, chain, orchestrate, refine, route, sections, vote
from groundup.apps.workflows import pick, subtasks_of


def test_chain_passes_typed_outputs_along_and_a_gate_stops_it(fake_openai):
    def script(body):
        prompt = last_user(body)
        if prompt.startswith("Count"):
            return "3"
        if prompt.startswith("Double"):
            return str(2 * int(prompt.split()[-1]))
        return "unexpected"

    server = fake_openai(script)
    steps = [Step("count", "Count the words: {input}", parse=int, gate=lambda n: n > 0),
             Step("double", "Double {count}", parse=int)]
    with ChatModel(server.url) as model:
        result = chain(model, steps, "a b c")
        assert result.passed and result.outputs == {"count": 3, "double": 6} and result.output == 6
        gated = chain(model, [Step("count", "Count: {input}", parse=int, gate=lambda n: n > 5), steps[1]], "x")
        assert not gated.passed and gated.stopped_at == "count" and gated.outputs == {"count": 3}
        with pytest.raises(GateError, match="chain step words: cannot parse the reply 'unexpected'"):
            chain(model, [Step("words", "Something {input}", parse=int)], "x")
    assert len(server.requests) == 2 + 1 + 1  # the gated chain never ran its second step


def test_route_runs_the_chosen_handler(fake_openai):
    server = fake_openai(lambda body: "Category: Billing." if "invoice" in last_user(body) else "no idea")
    routes = {"billing": lambda text: f"billing team: {text}", "tech": lambda text: f"tech team: {text}"}
    with ChatModel(server.url) as model:
        assert route(model, "my invoice is wrong", routes) == \
            type(route(model, "my invoice is wrong", routes))("billing", "billing team: my invoice is wrong")
        assert route(model, "hello", routes, default="tech").route == "tech"
        with pytest.raises(GateError, match="names none of"):
            route(model, "hello", routes)
    assert "billing, tech" in last_user(server.requests[0])
    assert pick("TECH, then billing", ["billing", "tech"]) == "tech"
    assert pick("technical", ["tech"]) is None


def test_sections_and_vote_keep_under_the_concurrency_limit(fake_openai):
    server = fake_openai(lambda body: last_user(body).upper(), delay=0.2)
    with ChatModel(server.url) as model:
        prompts = [f"part {i}" for i in range(6)]
        assert sections(model, prompts, max_concurrency=2) == [p.upper() for p in prompts]
        assert server.max_in_flight == 2
        assert len(model.trace.records) == 6
    answers = iter(["42", "41", "42", "forty", "42"])
    server = fake_openai(lambda body: next(answers), delay=0.1)
    with ChatModel(server.url) as model:
        result = vote(model, "6 * 7?", n=5, max_concurrency=3, parse=int)
    assert result.winner == 42 and result.counts == {42: 3, 41: 1} and sorted(map(str, result.answers)) == \
        sorted(["42", "41", "42", "None", "42"])
    assert server.max_in_flight <= 3
    with pytest.raises(ValueError, match="max_concurrency"):
        sections(model, ["x"], max_concurrency=0)


def test_orchestrator_splits_workers_answer_and_the_answers_are_combined(fake_openai):
    def script(body):
        prompt = last_user(body)
        if prompt.startswith("Break"):
            return 'Here: ["find the capital", "find the population", "find the river"]'
        if prompt.startswith("Overall"):
            return "answer to " + prompt.rsplit("\n", 1)[-1]
        return "combined: " + " | ".join(re.findall(r"answer to find the [a-z]+", prompt))

    server = fake_openai(script, delay=0.1)
    with ChatModel(server.url) as model:
        result = orchestrate(model, "Describe France", max_subtasks=2, max_concurrency=2)
    assert result.subtasks == ["find the capital", "find the population"]
    assert result.results == ["answer to find the capital", "answer to find the population"]
    assert result.answer == "combined: answer to find the capital | answer to find the population"
    assert subtasks_of("- one\n- two\n", 5) == ["one", "two"]
    assert subtasks_of(json.dumps(["a", "b", "c"]), 2) == ["a", "b"]


def test_refine_revises_with_feedback_and_stops_at_the_iteration_bound(fake_openai):
    def script(body):
        prompt = last_user(body)
        if prompt.startswith("Evaluate"):
            return "PASS" if "v3" in prompt else "FAIL: not good enough"
        if prompt.startswith("Task:"):
            assert "Feedback:\nnot good enough" in prompt
            return "v" + str(int(re.search(r"answer:\nv(\d)", prompt).group(1)) + 1)
        return "v1"

    server = fake_openai(script)
    with ChatModel(server.url) as model:
        result = refine(model, "write it", max_iterations=5)
        assert (result.answer, result.accepted, result.iterations) == ("v3", True, 3)
        assert [h["answer"] for h in result.history] == ["v1", "v2", "v3"]
        bounded = refine(model, "write it", max_iterations=2)
        assert (bounded.answer, bounded.accepted, bounded.iterations) == ("v2", False, 2)
        with pytest.raises(ValueError, match="max_iterations"):
            refine(model, "x", max_iterations=0)
