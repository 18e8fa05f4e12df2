"""The `groundup chat` stage: an interactive chat with a model dir in the terminal.

Each line typed is a user turn; the whole conversation is rendered with the model dir's chat template
(ChatML by default) and the answer streams back as it is generated, ending at the template's
end-of-turn token. ``/reset`` forgets the conversation (the system prompt stays), ``/exit`` (or end of
input) leaves. When the conversation outgrows the context, the oldest turns are dropped.
"""

from __future__ import annotations

import queue
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from groundup.infer.engine import Engine, Request
from groundup.infer.sampling import SamplingParams
from groundup.model.io import load_model_dir
from groundup.tokenizer.chat import END_OF_TURN, read_chat_template, render_chat


def _default_sampling() -> SamplingParams:
    return SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=256)


@dataclass(kw_only=True)
class Config:
    """Chat with a model dir in the terminal."""

    model: Path = Path("runs/tiny/model")
    """Model dir (its chat_template.jinja, if any, formats the conversation)."""
    system: str | None = None
    """A system prompt that opens every conversation."""
    sampling: SamplingParams = field(default_factory=_default_sampling)
    """Sampling and stopping settings of each answer."""
    device: str = "cpu"
    """'cpu', 'cuda', 'cuda:N', or 'auto'."""


class ChatSession:
    """A conversation over an engine: ``ask(text, on_text)`` streams one answer and keeps the history."""

    def __init__(self, engine: Engine, template: str, params: SamplingParams, system: str | None = None) -> None:
        self.engine = engine
        self.template = template
        end = engine.tokenizer.token_to_id(END_OF_TURN)
        self.params = replace(params, stop_token_ids=[*params.stop_token_ids, *([end] if end is not None else [])])
        self.system = system
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def _prompt_ids(self) -> list[int]:
        budget = self.engine.max_len - 1 - min(self.params.max_new_tokens, self.engine.max_len // 2)
        while True:
            ids = self.engine.tokenizer.encode_with_specials(render_chat(self.messages, self.template,
                                                                         add_generation_prompt=True))
            first_turn = 1 if self.system else 0
            if len(ids) <= budget or len(self.messages) - first_turn <= 1:
                return ids[-budget:]
            del self.messages[first_turn : first_turn + 2]  # drop the oldest exchange

    def ask(self, text: str, on_text=lambda s: None) -> str:
        self.messages.append({"role": "user", "content": text})
        events: queue.Queue = queue.Queue()
        ids = self._prompt_ids()
        params = replace(self.params, max_new_tokens=min(self.params.max_new_tokens, self.engine.max_len - len(ids)))
        request = Request(prompt_ids=ids, params=params, on_event=events.put)
        self.engine.submit(request)
        answer = []
        try:
            while True:
                event = events.get()
                if event.text:
                    answer.append(event.text)
                    on_text(event.text)
                if event.finish_reason is not None:
                    if event.error:
                        raise RuntimeError(event.error)
                    break
        except KeyboardInterrupt:  # Ctrl-C stops the answer, not the chat
            self.engine.cancel(request.request_id)
        reply = "".join(answer)
        self.messages.append({"role": "assistant", "content": reply})
        return reply


def run(cfg: Config) -> Path:
    model_dir = Path(cfg.model)
    model, tokenizer = load_model_dir(model_dir, device=cfg.device)
    engine = Engine(model, tokenizer, max_seqs=1)
    session = ChatSession(engine, read_chat_template(model_dir), cfg.sampling, cfg.system)
    interactive = sys.stdin.isatty()
    print(f"chatting with {model_dir} (/reset forgets the conversation, /exit leaves)", file=sys.stderr)
    try:
        while True:
            if interactive:
                print("> ", end="", flush=True, file=sys.stderr)
            line = sys.stdin.readline()
            if not line:
                break
            text = line.rstrip("\n")
            if text.strip() in ("/exit", "/quit"):
                break
            if text.strip() == "/reset":
                session.reset()
                print("[conversation reset]", file=sys.stderr, flush=True)
                continue
            if not text.strip():
                continue
            session.ask(text, on_text=lambda s: (sys.stdout.write(s), sys.stdout.flush()))
            sys.stdout.write("\n")
            sys.stdout.flush()
    finally:
        engine.shutdown()
    return model_dir
