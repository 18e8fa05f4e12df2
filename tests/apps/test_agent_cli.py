import json

from fake_openai import call, tool_results

from groundup.apps import ChatModel
from groundup.apps.endpoint import endpoint
from groundup.cli import main
from groundup.report.collect import collect
from groundup.report.page import render


def test_groundup_agent_runs_a_task_with_python_tools_and_the_report_draws_its_trace(
        fake_openai, tmp_path, monkeypatch, capsys):
    (tmp_path / "tools_for_agent_cli.py").write_text("def multiply(a: int, b: int) -> int:\n"
                                          "    '''Multiply two integers.'''\n    return a * b\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    server = fake_openai(lambda body: {"tool_calls": [call("multiply", {"a": 6, "b": 7})]} if not tool_results(body)
                         else "It is " + tool_results(body)[0]["content"])
    out = tmp_path / "run" / "agent"
    assert main(["agent", "--model", server.url, "--tools", "tools_for_agent_cli:multiply", "--out", str(out),
                 "What is 6 times 7?"]) == 0
    assert capsys.readouterr().out.strip() == "It is 42"
    result = json.loads((out / "result.json").read_text())
    assert result["stopped"] == "answer" and result["tool_calls"][0]["result"] == "42"
    records = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["model", "tool", "model"]
    page = render([collect(tmp_path / "run")])
    assert 'id="apps"' in page and "multiply" in page and 'id="apps" class="notrun"' not in page


def test_groundup_agent_fails_cleanly_on_an_endpoint_that_answers_500(fake_openai, tmp_path):
    import pytest

    server = fake_openai(lambda body: 503)
    with pytest.raises(RuntimeError, match=r"stopped without an answer \(error\).*HTTP 503"):
        main(["agent", "--model", server.url, "--retries", "1", "--out", str(tmp_path / "a"), "hi"])
    record = json.loads((tmp_path / "a" / "trace.jsonl").read_text())
    assert record["ok"] is False and "HTTP 503" in record["error"]


def test_a_model_dir_is_served_for_the_run(spine_model):
    with endpoint(spine_model, start_timeout=120) as url, ChatModel(url, timeout=60) as model:
        assert isinstance(model.complete("Hello", max_tokens=4), str)
        assert model.trace.records[-1]["ok"] and model.trace.records[-1]["completion_tokens"] <= 4
