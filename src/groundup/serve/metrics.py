"""``/metrics`` in Prometheus' text format: request and token counters, queue depth, time to first token, tokens/s."""

from __future__ import annotations

from groundup.infer.engine import percentile
from groundup.serve.state import ServerState


def render_metrics(state: ServerState) -> str:
    s = state.engine.stats
    ttft = list(s.ttft_seconds)
    lines = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP groundup_{name} {help_text}")
        lines.append(f"# TYPE groundup_{name} {kind}")
        for labels, value in samples:
            lines.append(f"groundup_{name}{labels} {value}")

    metric("requests_total", "counter", "Requests accepted by the engine.", [("", s.requests_total)])
    metric("requests_finished_total", "counter", "Requests finished normally.", [("", s.requests_finished)])
    metric("requests_cancelled_total", "counter", "Requests cancelled (client disconnected).", [("", s.requests_cancelled)])
    metric("requests_failed_total", "counter", "Sequences that ended with an error.", [("", s.requests_failed)])
    metric("prompt_tokens_total", "counter", "Prompt tokens prefilled.", [("", s.prompt_tokens_total)])
    metric("generation_tokens_total", "counter", "Tokens generated.", [("", s.generation_tokens_total)])
    metric("num_requests_running", "gauge", "Sequences holding a KV-cache slot.", [("", s.running)])
    metric("num_requests_waiting", "gauge", "Sequences waiting for a slot (queue depth).", [("", s.waiting)])
    metric("http_requests_in_progress", "gauge", "HTTP generation requests in progress.", [("", state.active)])
    quantiles = [(f'{{quantile="{q}"}}', percentile(ttft, q * 100) if ttft else 0.0) for q in (0.5, 0.9, 0.99)]
    metric("time_to_first_token_seconds", "summary", "Time from arrival to first token (last 4096 requests).",
           quantiles + [("_sum", sum(ttft)), ("_count", len(ttft))])
    rate = s.generation_tokens_total / s.busy_seconds if s.busy_seconds > 0 else 0.0
    metric("generation_tokens_per_second", "gauge", "Generated tokens per second of engine busy time.", [("", rate)])
    if state.engine.draft is not None:
        metric("draft_tokens_proposed_total", "counter", "Tokens the draft model guessed (speculative decoding).",
               [("", s.draft_tokens_proposed)])
        metric("draft_tokens_accepted_total", "counter", "Guesses the model accepted.", [("", s.draft_tokens_accepted)])
        metric("draft_acceptance_rate", "gauge", "Share of the draft's guesses accepted since the start.",
               [("", s.draft_acceptance_rate or 0.0)])
    metric("http_responses_total", "counter", "HTTP responses by status code.",
           [(f'{{code="{code}"}}', n) for code, n in sorted(state.responses.items())])
    return "\n".join(lines) + "\n"
