"""`groundup chat`: a terminal conversation fed on stdin; history, template, /reset, /exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from groundup.infer.engine import Engine
from groundup.infer.sampling import SamplingParams
from groundup.model.io import load_model_dir
from groundup.serve.chat import ChatSession
from groundup.tokenizer.chat import DEFAULT_CHAT_TEMPLATE

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_serve_chat_session_history_and_reset(serve_model_dir):
    model, tokenizer = load_model_dir(serve_model_dir)
    engine = Engine(model, tokenizer, max_seqs=1)
    try:
        params = SamplingParams(temperature=0, max_new_tokens=8)
        session = ChatSession(engine, DEFAULT_CHAT_TEMPLATE, params, system="Be brief.")
        streamed: list[str] = []
        first = session.ask("hello", streamed.append)
        assert "".join(streamed) == first
        session.ask("and again")
        assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
        session.reset()
        assert session.messages == [{"role": "system", "content": "Be brief."}]
        assert session.ask("hello") == first  # greedy: same conversation, same answer
    finally:
        engine.shutdown()


def test_serve_chat_cli_on_stdin(serve_model_dir):
    model, tokenizer = load_model_dir(serve_model_dir)
    engine = Engine(model, tokenizer, max_seqs=1)
    try:
        expected = ChatSession(engine, DEFAULT_CHAT_TEMPLATE, SamplingParams(temperature=0, max_new_tokens=5)).ask("hi")
    finally:
        engine.shutdown()
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run(
        [sys.executable, "-m", "groundup.cli", "chat", "--model", str(serve_model_dir), "--sampling.temperature", "0",
         "--sampling.max_new_tokens", "5"],
        input="hi\n/reset\nhi\n/exit\nnever read\n", capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # streamed answers, one per line; after /reset the same question gets the same greedy answer
    assert proc.stdout == f"{expected}\n{expected}\n"
    assert "[conversation reset]" in proc.stderr


def test_chat_prompts_are_encoded_as_fine_tuning_encodes_them(live_server, serve_model_dir):
    """The server's and `groundup chat`'s prompt ids are the ids SFT trained before the answer: the template's
    <|im_start|> and <|im_end|> as their special ids, not as the characters of their strings."""
    import httpx

    from groundup.finetune.data import chat_segments, tokenize_segments
    from groundup.tokenizer.chat import render_chat

    _, tokenizer = load_model_dir(serve_model_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    example = tokenize_segments(tokenizer, chat_segments([*messages, {"role": "assistant", "content": "hi"}], None))
    trained_from = next(i for i, label in enumerate(example.labels) if label != -100)
    prompt = example.ids[:trained_from]
    assert tokenizer.special_tokens["<|im_start|>"] in prompt
    assert len(tokenizer.encode(render_chat(messages, add_generation_prompt=True))) > len(prompt)  # as text: longer

    body = {"model": "tiny", "messages": messages, "max_tokens": 1, "temperature": 0}
    usage = httpx.post(live_server.url + "/v1/chat/completions", json=body, timeout=30).json()["usage"]
    assert usage["prompt_tokens"] == len(prompt)

    engine = Engine(*load_model_dir(serve_model_dir), max_seqs=1)
    try:
        session = ChatSession(engine, DEFAULT_CHAT_TEMPLATE, SamplingParams(temperature=0, max_new_tokens=1),
                              system="Be brief.")
        session.messages.append({"role": "user", "content": "hello there"})
        assert session._prompt_ids() == prompt
    finally:
        engine.shutdown()
