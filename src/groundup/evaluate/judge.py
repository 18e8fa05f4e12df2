"""A judge model behind any OpenAI-compatible URL: a 1-10 rating, or a pairwise verdict with positions swapped.

The prompts follow MT-Bench's single-answer grading and pairwise comparison (Zheng et al., 2023): the
judge explains, then writes its verdict in double brackets (``[[7]]``, ``[[A]]``, ``[[B]]``, ``[[C]]``
for a tie), which is parsed here. Judges favour the answer they read first, so a pairwise comparison
asks twice with the answers swapped and counts a win only when both orders agree (else a tie).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal

from groundup.endpoint import ChatClient, RetryPolicy

RUBRIC = ("Please act as an impartial judge and evaluate the quality of the response provided by an AI "
          "assistant to the user question displayed below. Your evaluation should consider factors such as the "
          "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response.")
SINGLE = ("{rubric} Begin your evaluation by providing a short explanation. Be as objective as possible. After "
          "providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following "
          "this format: \"[[rating]]\", for example: \"Rating: [[5]]\".\n\n"
          "[Question]\n{question}\n\n{reference}[The Start of Assistant's Answer]\n{answer}\n"
          "[The End of Assistant's Answer]")
PAIRWISE = ("{rubric} You will compare the responses of two AI assistants and choose the better one. Avoid any "
            "position biases and ensure that the order in which the responses were presented does not influence "
            "your decision. Do not allow the length of the responses to influence your evaluation. After "
            "providing your explanation, output your final verdict by strictly following this format: \"[[A]]\" "
            "if assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie.\n\n"
            "[User Question]\n{question}\n\n{reference}[The Start of Assistant A's Answer]\n{answer_a}\n"
            "[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n"
            "[The End of Assistant B's Answer]")


@dataclass(kw_only=True)
class JudgeConfig:
    url: str | None = None
    """Base URL of an OpenAI-compatible API (e.g. http://localhost:8000/v1); None: no judging."""
    model: str = "judge"
    """Model name sent to the API."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (sent as a Bearer token when set)."""
    rubric: str = RUBRIC
    """What the judge is told to look for."""
    mode: Literal["score", "pairwise"] = "score"
    """'score': rate each answer 1-10; 'pairwise': compare with the answers of `against`."""
    timeout_s: float = 120.0
    """Seconds to wait for one judgement."""
    retries: int = 2
    """Further tries of a judgement after a 5xx, a 429 (its Retry-After honoured), a timeout or a refused or
    dropped connection, with exponential backoff; any other 4xx fails at once."""
    backoff_s: float = 1.0
    """The first retry waits this long, each next one twice as long."""


class Judge:
    """Asks the judge through the shared client (:mod:`groundup.endpoint`): its timeout and retry rules;
    an endpoint that keeps failing raises :class:`~groundup.endpoint.EndpointError` naming the URL and status."""

    def __init__(self, cfg: JudgeConfig, client: ChatClient | None = None) -> None:
        if not cfg.url:
            raise ValueError("judge: no URL given")
        self.cfg = cfg
        self.client = client or ChatClient(cfg.url, api_key=os.environ.get(cfg.api_key_env) or None,
                                           timeout=cfg.timeout_s,
                                           policy=RetryPolicy(retries=cfg.retries, backoff_seconds=cfg.backoff_s))

    def ask(self, prompt: str) -> str:
        return self.client.complete(prompt, model=self.cfg.model, temperature=0, max_tokens=1024).content or ""

    def score(self, question: str, answer: str, reference: str | None = None) -> tuple[float | None, str]:
        """A 1-10 rating (None when the judge gave none it could parse) and the judge's text."""
        text = self.ask(SINGLE.format(rubric=self.cfg.rubric, question=question, answer=answer,
                                      reference=_reference(reference)))
        return parse_rating(text), text

    def compare(self, question: str, answer_a: str, answer_b: str,
                reference: str | None = None) -> tuple[Literal["A", "B", "tie"], list[str]]:
        """Which answer is better, asked in both orders; a win needs both orders to agree."""
        first = self.ask(PAIRWISE.format(rubric=self.cfg.rubric, question=question, answer_a=answer_a,
                                         answer_b=answer_b, reference=_reference(reference)))
        second = self.ask(PAIRWISE.format(rubric=self.cfg.rubric, question=question, answer_a=answer_b,
                                          answer_b=answer_a, reference=_reference(reference)))
        v1, v2 = parse_verdict(first), _swap(parse_verdict(second))
        return (v1 if v1 == v2 and v1 in ("A", "B") else "tie"), [first, second]


def _reference(reference: str | None) -> str:
    return f"[Reference Answer]\n{reference}\n\n" if reference else ""


def _swap(verdict: str | None) -> str | None:
    return {"A": "B", "B": "A"}.get(verdict or "", verdict)


def parse_rating(text: str) -> float | None:
    match = re.search(r"\[\[(\d+(?:\.\d+)?)\]\]", text) or re.search(r"\[(\d+(?:\.\d+)?)\]", text)
    if not match:
        return None
    value = float(match.group(1))
    return value if 1 <= value <= 10 else None


def parse_verdict(text: str) -> str | None:
    match = re.search(r"\[\[([ABC])\]\]", text)
    return {"A": "A", "B": "B", "C": "tie"}[match.group(1)] if match else None
