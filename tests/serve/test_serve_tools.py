"""Tool calling: tools in the chat template, constrained calls, OpenAI's response and stream shapes, bad input."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from groundup.serve.tools import ToolCallParser, parse_tool_calls
from groundup.tokenizer.chat import ChatFormatError, render_chat

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "days"],
           "properties": {"city": {"type": "string", "maxLength": 6},
                          "days": {"type": "integer", "minimum": 1, "maximum": 7},
                          "unit": {"enum": ["C", "F"]}}}
SEARCH = {"type": "object", "required": ["query"], "properties": {"query": {"type": "string", "maxLength": 5}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather forecast",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "search", "parameters": SEARCH}}]
SCHEMAS = {"get_weather": WEATHER, "search": SEARCH}
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city": "Paris", "days": 2}'}},
        {"id": "call_2", "type": "function", "function": {"name": "search", "arguments": '{"query": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    {"role": "tool", "tool_call_id": "call_2", "content": "a city"},
    {"role": "assistant", "content": "18 C in Paris."},
    {"role": "user", "content": "And tomorrow?"},
]


def _valid_call(call: dict) -> None:
    """One OpenAI tool call whose arguments parse (strict JSON) and follow its tool's schema."""
    assert call["type"] == "function" and call["id"].startswith("call_")
    arguments = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, SCHEMAS[call["function"]["name"]])


# ---------------------------------------------------------------------------- template and parser


def test_template_renders_tools_calls_and_results():
    text = render_chat(HISTORY, tools=TOOLS, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert '\n{"type": "function", "function": {"name": "get_weather", "description": "Weather forecast"' in text
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}'
            '\n</tool_call>\n<tool_call>\n{"name": "search", "arguments": {"query": "Paris"}}\n</tool_call>'
            '<|im_end|>\n<|im_start|>tool\n<tool_response>\n18 C\n</tool_response><|im_end|>\n') in text
    assert text.endswith("<|im_start|>user\nAnd tomorrow?<|im_end|>\n<|im_start|>assistant\n")
    # without tools: plain ChatML, as before
    assert render_chat(HISTORY[:2]) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWeather in Paris?" \
                                       "<|im_end|>\n"
    # the parser reads back what the template writes for an assistant turn
    turn = render_chat(HISTORY[:3], tools=TOOLS).rsplit("<|im_start|>assistant\n", 1)[1].removesuffix("<|im_end|>\n")
    content, calls = parse_tool_calls(turn)
    assert content == "" and [c["function"] for c in calls] == [c["function"] for c in HISTORY[2]["tool_calls"]]


def test_tool_message_must_answer_an_earlier_call():
    bad = [*HISTORY[:3], {"role": "tool", "tool_call_id": "call_9", "content": "?"}]
    with pytest.raises(ChatFormatError, match=r"messages\[3\]\.tool_call_id: 'call_9' answers no tool call"):
        render_chat(bad)


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_parser_streams_what_it_parses_whole(step):
    text = ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "P\\"a\\\\\tris",\n"days": 3}}\n'
            '</tool_call>\n<tool_call>\n{"name": "search", "arguments": {"query": "<tool_call>"}}\n</tool_call>')
    content, calls = parse_tool_calls(text)
    assert content == "Let me look." and [c["function"]["name"] for c in calls] == ["get_weather", "search"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": 'P"a\\\tris', "days": 3}  # raw tab escaped
    parser = ToolCallParser()
    deltas = [parser.feed(text[i: i + step]) for i in range(0, len(text), step)] + [parser.finish()]
    streamed: dict[int, dict] = {}
    for delta in deltas:
        for entry in delta.tool_calls:
            if "id" in entry:  # the first entry of a call names it, with empty arguments
                assert entry["index"] not in streamed and entry["type"] == "function"
                streamed[entry["index"]] = {"name": entry["function"]["name"], "arguments": ""}
            streamed[entry["index"]]["arguments"] += entry["function"]["arguments"]
    assert "".join(d.content for d in deltas) == content
    assert [streamed[i] for i in sorted(streamed)] == [
        {"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in calls]


# ---------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def live_server(serve_tools_dir, make_live_server):
    return make_live_server(serve_tools_dir, served_model_name="tiny", engine={"max_seqs": 8},
                            limits={"max_tokens": 192})


@pytest.fixture(scope="module")
def client(live_server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="none", max_retries=0)


def test_required_and_named_calls_follow_their_schemas(client):
    user = [{"role": "user", "content": "Weather in Paris?"}]
    out = client.chat.completions.create(model="tiny", messages=user, tools=TOOLS, tool_choice="required",
                                         parallel_tool_calls=False, temperature=1.0, n=4, max_tokens=160, seed=0)
    for choice in out.choices:
        assert choice.finish_reason == "tool_calls", choice
        assert choice.message.tool_calls
        for call in choice.message.tool_calls:
            _valid_call(call.model_dump())
    named = client.chat.completions.create(
        model="tiny", messages=user, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "search"}},
        temperature=1.0, n=4, max_tokens=160, seed=1)
    for choice in named.choices:
        (call,) = choice.message.tool_calls
        assert call.function.name == "search" and choice.finish_reason == "tool_calls"
        _valid_call(call.model_dump())
    assert all(len(c.message.tool_calls) == 1 for c in out.choices)
    several = client.chat.completions.create(model="tiny", messages=user, tools=TOOLS, tool_choice="required",
                                             temperature=1.0, n=4, max_tokens=160, seed=2)
    for choice in several.choices:  # every call closed before the end is valid (the last may be cut by length)
        closed = choice.message.tool_calls[:-1] if choice.finish_reason == "length" else choice.message.tool_calls
        for call in closed:
            _valid_call(call.model_dump())


def test_history_with_tool_results_and_auto_choice(client):
    out = client.chat.completions.create(model="tiny", messages=HISTORY, tools=TOOLS, temperature=1.0, n=2,
                                         max_tokens=24, seed=3)
    for choice in out.choices:  # the random model rarely opens a call; a call it opens is valid
        assert choice.finish_reason in ("stop", "length", "tool_calls")
        for call in choice.message.tool_calls or []:
            _valid_call(call.model_dump())
    none = client.chat.completions.create(model="tiny", messages=HISTORY, tools=TOOLS, tool_choice="none",
                                          temperature=0, max_tokens=8)
    assert none.choices[0].message.tool_calls is None and isinstance(none.choices[0].message.content, str)


def test_auto_grammar_is_free_until_the_tag_then_constrained(live_server):
    """``auto``: any text, but once ``<tool_call>`` is written the call must follow a tool's schema."""
    from groundup.infer.structured import make_matcher

    grammar = live_server.state.grammars.tool_calls([{"name": "search", "parameters": SEARCH}], "auto")
    matcher = make_matcher(grammar.compiled, {live_server.state.tokenizer.eos_id})
    assert matcher.accept_string("Hello there, <b>x</b> ")
    assert matcher.accept_string('<tool_call>\n{"name": "search", "arguments": ')
    assert not matcher.fork().accept_string('{"nope": 1}')
    assert matcher.accept_string('{"query": "ab"}}\n</tool_call> and more text')
    closed = make_matcher(grammar.compiled, set())
    assert not closed.accept_string('<tool_call>\n{"name": "other", ')


def test_streamed_calls_arrive_as_openai_deltas(client):
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], tools=TOOLS,
                                            tool_choice="required", parallel_tool_calls=False, temperature=1.0,
                                            max_tokens=160, seed=4,
                                            stream=True)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for entry in choice.delta.tool_calls or []:
                if entry.id:
                    calls[entry.index] = {"id": entry.id, "type": entry.type,
                                          "function": {"name": entry.function.name, "arguments": ""}}
                calls[entry.index]["function"]["arguments"] += entry.function.arguments or ""
    assert finish == "tool_calls" and calls
    for call in calls.values():
        _valid_call(call)


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"frobnicate": 1}, "frobnicate", "unrecognized request argument(s): frobnicate"),
    ({"functions": []}, "functions", "send 'tools'"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
     "tools[0].function.parameters", "is not valid JSON Schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": {"minimum": "x"}}}}}]},
     "tools[0].function.parameters", "['properties']['a']['minimum']"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "'nope'"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format", "cannot be combined"),
    ({"messages": [*HISTORY[:3], {"role": "tool", "tool_call_id": "call_7", "content": "x"}]}, "messages",
     "messages[3].tool_call_id: 'call_7' answers no tool call"),
])
def test_bad_tool_requests_are_400_naming_the_field(live_server, body, param, message):
    sent = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body}
    r = httpx.post(live_server.url + "/v1/chat/completions", json=sent, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and message in error["message"], error


def test_hf_export_renders_tools_as_the_server_does(serve_tools_dir, tmp_path):
    """The exported chat template: transformers' apply_chat_template(messages, tools=...) gives the server's text."""
    transformers = pytest.importorskip("transformers")
    from groundup.interop.hf import export_hf

    out = export_hf(serve_tools_dir, tmp_path / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    for messages, tools in [(HISTORY, TOOLS), (HISTORY[1:3], TOOLS), (HISTORY[:2], None)]:
        ours = render_chat(messages, tools=tools, add_generation_prompt=True)
        theirs = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        assert theirs == ours
    dict_arguments = [{**HISTORY[2], "tool_calls": [{"id": "call_1", "type": "function",
                                                     "function": {"name": "search", "arguments": {"query": "é"}}}]}]
    assert tokenizer.apply_chat_template(HISTORY[:2] + dict_arguments, tools=TOOLS, tokenize=False) == \
        render_chat(HISTORY[:2] + dict_arguments, tools=TOOLS)
