"""Generation tasks: generate_until with stop sequences, exact match, BLEU, chrF, ROUGE, and pass@k for code.

BLEU and chrF are sacrebleu's corpus scores (0-100) and are reported with sacrebleu's signature, so a
figure can be compared with published ones only when the signatures match. ROUGE-1/2/L are
rouge-score's F-measures (0-1, stemming on), the best over an item's references, averaged over items.

pass@k uses the unbiased estimator of Chen et al. (2021), ``1 - C(n - c, k) / C(n, k)`` for n samples
of which c pass, averaged over problems. Candidate programs run in a separate Python process
(``python -I``) in an empty temporary directory, with resource limits set before it starts
(address space, CPU seconds, file size, no core files), a wall-clock timeout, an empty environment,
and the ``socket`` module disabled; a program that loops forever or allocates without bound is
killed and counted as failed. This is a guard against accidents, not a security boundary: run
untrusted code in a container or VM as well.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from groundup.extras import import_extra

# ---------------------------------------------------------------------------- generation


def generate_until(model, tokenizer, contexts: str | Sequence[str] | Sequence[Sequence[int]], *,
                   until: Sequence[str] = (), max_new_tokens: int = 256, temperature: float = 0.0,
                   seeds: Sequence[int | None] | None = None, chat_template: str | None = None) -> str | list[str]:
    """Continue each context, all through one inference engine (continuous batching); each text is cut before
    the first stop sequence. Greedy unless temperature > 0; ``seeds[i]`` seeds context i's draws. Greedy
    results equal one generation per context, bit for bit (the engine is batch-invariant). One context (a
    string) gives one text; a context may also be token ids, fed as they are.

    With ``chat_template`` (a chat model's), each context is the one user turn of a conversation rendered with
    it, the assistant's turn opened, encoded with the template's special tokens as fine-tuning encodes them,
    and each answer ends at the template's end of turn (ChatML's ``<|im_end|>``) or EOS."""
    from groundup.infer.generate import generate_batch
    from groundup.infer.sampling import SamplingParams
    from groundup.tokenizer.chat import end_of_turn_ids

    single = isinstance(contexts, str)
    contexts = [contexts] if single else list(contexts)
    stop_ids: list[int] = []
    if chat_template is not None:
        contexts = [chat_prompt_ids(tokenizer, c, chat_template) for c in contexts]
        stop_ids = end_of_turn_ids(tokenizer, chat_template)
    seeds = list(seeds) if seeds is not None else [0] * len(contexts)
    params = [SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, stop=list(until), seed=seed,
                             stop_token_ids=stop_ids) for seed in seeds]
    texts = [result.text for result in generate_batch(model, tokenizer, contexts, params)]
    return texts[0] if single else texts


def chat_prompt_ids(tokenizer, text: str, template: str) -> list[int]:
    """``text`` as the user turn of a conversation rendered with ``template``, the assistant's turn opened."""
    from groundup.tokenizer.chat import render_chat

    rendered = render_chat([{"role": "user", "content": text}], template, add_generation_prompt=True)
    return tokenizer.encode_with_specials(rendered)


# ---------------------------------------------------------------------------- metrics


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1 when the prediction, stripped of surrounding whitespace, equals one of the references."""
    return float(prediction.strip() in {r.strip() for r in references})


def reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-item reference lists as sacrebleu's reference streams (None where an item has fewer)."""
    width = max(len(r) for r in references)
    return [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, str]:
    metric = import_extra("sacrebleu.metrics", "eval", purpose="BLEU").BLEU()
    score = metric.corpus_score(list(predictions), reference_streams(references))
    return score.score, str(metric.get_signature())


def chrf(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, str]:
    metric = import_extra("sacrebleu.metrics", "eval", purpose="chrF").CHRF()
    score = metric.corpus_score(list(predictions), reference_streams(references))
    return score.score, str(metric.get_signature())


def rouge(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, list[float]]:
    """Per-item ROUGE-1/2/L F-measure (the best over the item's references)."""
    scorer = import_extra("rouge_score.rouge_scorer", "eval", purpose="ROUGE").RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    out: dict[str, list[float]] = {"rouge1": [], "rouge2": [], "rougeL": []}
    for pred, refs in zip(predictions, references, strict=True):
        scores = [scorer.score(ref, pred) for ref in refs]
        for key in out:
            out[key].append(max(s[key].fmeasure for s in scores))
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: n samples, c correct (1 - C(n-c, k) / C(n, k), computed stably)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_hat_k(n: int, c: int, k: int) -> float:
    """pass^k as tau-bench defines it: the chance that k samples drawn without replacement all pass,
    C(c, k) / C(n, k), as the product of (c - i) / (n - i) over i < k."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass^{k} needs at least {k} samples per problem, got {n}")
    if c < k:
        return 0.0
    return float(np.prod((c - np.arange(k)) / (n - np.arange(k))))


def pass_power_k(n: int, c: int, k: int) -> float:
    """pass^k as the plug-in estimate (c / n) ** k: k independent tries with the observed pass rate all pass."""
    if not 0 <= c <= n or n < 1 or k < 1:
        raise ValueError(f"need 0 <= c <= n, n >= 1 and k >= 1, got n={n}, c={c}, k={k}")
    return (c / n) ** k


# ---------------------------------------------------------------------------- running candidate code

_GUARD = textwrap.dedent("""\
    import socket as _socket
    def _no_network(*args, **kwargs):
        raise OSError("network access is disabled while evaluating candidate code")
    _socket.socket = _no_network
    _socket.create_connection = _no_network
    _socket.getaddrinfo = _no_network
    del _socket, _no_network
    """)


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0
    """Wall-clock seconds before the process is killed."""
    memory_mb: int = 512
    """Address-space limit (RLIMIT_AS) of the process."""
    cpu_s: int = 5
    """CPU seconds (RLIMIT_CPU): a busy loop gets SIGXCPU even if the wall clock is lenient."""
    file_mb: int = 16
    """Largest file the program may write (RLIMIT_FSIZE)."""


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str
    """'passed', 'failed' (non-zero exit), 'timeout', or 'killed' (a resource limit's signal)."""
    detail: str = ""


def _limit_resources(limits: Limits):
    def apply() -> None:  # runs in the child between fork and exec
        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        fsize = limits.file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.setsid()  # its own process group, so a timeout kills whatever it started too

    return apply


def run_program(program: str, limits: Limits = Limits()) -> Outcome:
    """Run a Python program in a limited subprocess; passed when it exits 0 in time."""
    with tempfile.TemporaryDirectory(prefix="groundup-exec-") as tmp:
        path = os.path.join(tmp, "candidate.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(_GUARD + program)
        env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "HOME": tmp, "NO_PROXY": "*"}
        proc = subprocess.Popen([sys.executable, "-I", path], cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=_limit_resources(limits))
        try:
            _, err = proc.communicate(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.communicate()
            return Outcome(False, "timeout", f"killed after {limits.timeout_s} s")
        detail = err.decode("utf-8", errors="replace")[-500:]
        if proc.returncode == 0:
            return Outcome(True, "passed")
        if proc.returncode < 0:
            return Outcome(False, "killed", f"signal {-proc.returncode}; {detail}")
        if "MemoryError" in detail:
            return Outcome(False, "killed", "memory limit: " + detail)
        return Outcome(False, "failed", detail)


def code_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """HumanEval's layout: the prompt and the completion, then the tests, then ``check(entry_point)``."""
    program = prompt + completion + "\n\n" + test + "\n"
    if entry_point:
        program += f"\ncheck({entry_point})\n"
    return program


def run_programs(programs: Sequence[str], limits: Limits = Limits(), workers: int | None = None) -> list[Outcome]:
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # each thread only waits on its subprocess
        return list(pool.map(lambda p: run_program(p, limits), programs))


def pass_at_k_scores(passed: Sequence[Sequence[bool]], ks: Sequence[int]) -> dict[str, float]:
    """pass@k and both pass^k (``pass^k``: tau-bench's C(c, k) / C(n, k); ``pass^k_power``: (c / n) ** k) averaged
    over problems, for each k no larger than the fewest samples of any problem."""
    out: dict[str, Any] = {}
    n_min = min(len(p) for p in passed)
    for k in ks:
        if k > n_min:
            continue
        for name, estimate in ((f"pass@{k}", pass_at_k), (f"pass^{k}", pass_hat_k), (f"pass^{k}_power", pass_power_k)):
            if k == 1 and name != "pass@1":
                continue  # all three equal c / n at k = 1
            values = [estimate(len(p), sum(p), k) for p in passed]
            out[name] = sum(values) / len(values)
            out[name + "_stderr"] = (float(np.std(values, ddof=1)) / math.sqrt(len(values))
                                     if len(values) > 1 else math.nan)
    return out
