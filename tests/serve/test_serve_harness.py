"""lm-evaluation-harness's `local-completions` model against `groundup serve` gives `groundup evaluate`'s numbers.

lm-eval scores through the server as it scores any OpenAI-compatible endpoint: it counts tokens with the
server's /tokenize (found through /tokenizer_info, so no tokenizer files are needed), sends token ids
with ``echo=True, logprobs=1, max_tokens=1`` and sums the echoed prompt's log-probabilities after the
context. An MMLU-layout task and a rolling perplexity task are compared item by item with `groundup
evaluate` on the same model dir.
"""

from __future__ import annotations

import csv
import json
import math
import random
import textwrap
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'groundup[eval]')")
pytest.importorskip("tenacity", reason="lm-eval's API models need lm-eval[api] (pip install 'groundup[eval]')")

WORDS = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "log", "quickly", "red", "blue", "big", "small",
         "house", "tree", "river", "stone", "bird", "flew", "over", "under", "and", "but", "because"]
SUBJECT = "tiny_subject"
TOLERANCE = 1e-12
"""Largest difference allowed per item, relative to the item's log-likelihood (absolute below 1). The windows,
the first token and the context are the same both ways, and the server's prompt log-probabilities come from
the one scorer `groundup evaluate` uses (``groundup.infer.score``): the tokens' log-probabilities are the same
bits; what is left is lm-eval adding them in another order than ``math.fsum``."""


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_tasks(folder: Path) -> dict[str, Path]:
    """The same items for both: an MMLU CSV (groundup) and its JSONL (lm-eval), and one text JSONL."""
    rng = random.Random(0)
    rows = [[sentence(rng, rng.randint(3, 12)).capitalize() + "?", *(sentence(rng, rng.randint(1, 4))
                                                                     for _ in range(4)), rng.choice("ABCD")]
            for _ in range(10)]
    mmlu = folder / f"{SUBJECT}_test.csv"
    with open(mmlu, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    with open(folder / "mmlu.jsonl", "w", encoding="utf-8") as f:
        for q, a, b, c, d, answer in rows:
            f.write(json.dumps({"question": q, "choices": [a, b, c, d], "answer": "ABCD".index(answer)}) + "\n")
    # short documents (one window either way) and long ones (several windows)
    docs = [sentence(rng, rng.randint(5, 40)) for _ in range(6)] + [sentence(rng, 150) for _ in range(2)]
    text = folder / "text.jsonl"
    with open(text, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    description = f"The following are multiple choice questions (with answers) about {SUBJECT.replace('_', ' ')}."
    # lm-eval's own MMLU template (lm_eval/tasks/mmlu/default/_default_template_yaml)
    (folder / "tiny_mmlu.yaml").write_text(textwrap.dedent(f"""\
        task: tiny_mmlu
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {folder / "mmlu.jsonl"}
        test_split: test
        output_type: multiple_choice
        description: "{description}\\n\\n"
        doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
        doc_to_choice: ["A", "B", "C", "D"]
        doc_to_target: answer
        metric_list:
          - metric: acc
        """))
    (folder / "tiny_text.yaml").write_text(textwrap.dedent(f"""\
        task: tiny_text
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {text}
        output_type: loglikelihood_rolling
        test_split: test
        doc_to_text: ""
        doc_to_target: "{{{{text}}}}"
        metric_list:
          - metric: bits_per_byte
        """))
    return {"mmlu": mmlu, "text": text, "docs": docs}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("harness_tasks"))


@pytest.fixture(scope="module")
def through_server(harness_model_dir, tasks, make_live_server, tmp_path_factory):
    """lm-eval's samples, scored by local-completions through the server."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    server = make_live_server(harness_model_dir, served_model_name="tiny-harness", engine={"max_seqs": 8})
    context = server.state.engine.max_len
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
        out = simple_evaluate(
            model="local-completions",
            model_args={"base_url": server.url + "/v1/completions", "model": "tiny-harness", "max_length": context,
                        "batch_size": 8, "max_retries": 1},
            tasks=["tiny_mmlu", "tiny_text"], log_samples=True,
            task_manager=TaskManager(include_path=str(tasks["mmlu"].parent), include_defaults=False))
    return out["samples"], context


@pytest.fixture(scope="module")
def by_groundup_evaluate(harness_model_dir, tasks, tmp_path_factory):
    """`groundup evaluate`'s samples.jsonl on the same model dir and files, by task."""
    from groundup.evaluate import run as evaluate_stage

    out = evaluate_stage.run(evaluate_stage.Config(model=harness_model_dir, tasks=[str(tasks["mmlu"]),
                                                                                  str(tasks["text"])],
                                                   out=tmp_path_factory.mktemp("eval"), progress=False))
    samples: dict[str, list[dict]] = {}
    for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines():
        sample = json.loads(line)
        samples.setdefault(sample["task"], []).append(sample)
    return samples


def worst(ours: list[float], theirs: list[float]) -> tuple[float, float]:
    """The largest difference, relative to the log-likelihood (absolute below 1), and the largest absolute one."""
    pairs = list(zip(ours, theirs, strict=True))
    return max(abs(a - b) / max(1.0, abs(b)) for a, b in pairs), max(abs(a - b) for a, b in pairs)


def test_harness_mmlu_through_the_server_matches_groundup_evaluate(through_server, by_groundup_evaluate):
    samples, _ = through_server
    theirs = {s["doc_id"]: [r[0] for r in s["filtered_resps"]] for s in samples["tiny_mmlu"]}
    ours = {s["index"]: s["loglikelihoods"] for s in by_groundup_evaluate["tiny_subject"]}
    assert sorted(theirs) == sorted(ours) == list(range(10))
    relative, absolute = worst([x for i in ours for x in theirs[i]], [x for i in ours for x in ours[i]])
    print(f"\nMMLU layout, 10 items x 4 choices: largest difference {relative:.1e} relative, {absolute:.1e} absolute")
    assert relative <= TOLERANCE
    predicted = {s["doc_id"]: s["acc"] for s in samples["tiny_mmlu"]}
    assert predicted == {s["index"]: s["acc"] for s in by_groundup_evaluate["tiny_subject"]}


def test_harness_perplexity_through_the_server_matches_groundup(through_server, by_groundup_evaluate,
                                                                 harness_model_dir, tasks):
    """Documents within one window match `groundup evaluate`; longer ones are cut by lm-eval into windows of
    the context minus two tokens, and match groundup's scorer with that window."""
    from groundup.evaluate.lm import score_documents
    from groundup.model.io import load_model_dir

    samples, context = through_server
    theirs = {s["doc_id"]: s["filtered_resps"][0] for s in samples["tiny_text"]}
    ours = {s["index"]: s for s in by_groundup_evaluate["text"]}
    model, tokenizer = load_model_dir(harness_model_dir)
    windowed = score_documents(model, tokenizer, tasks["docs"], max_length=context - 2)
    short = [i for i in ours if ours[i]["tokens"] <= context - 2]
    long = [i for i in ours if ours[i]["tokens"] > context]
    assert len(short) == 6 and len(long) == 2  # both kinds are exercised
    short_rel, short_abs = worst([theirs[i] for i in short], [ours[i]["loglikelihood"] for i in short])
    long_rel, long_abs = worst([theirs[i] for i in long], [windowed[i].loglikelihood for i in long])
    print(f"\nperplexity: largest difference {short_rel:.1e} relative, {short_abs:.1e} absolute (6 documents in one "
          f"window, against groundup evaluate); {long_rel:.1e}, {long_abs:.1e} (2 documents in windows of "
          f"{context - 2}, against score_documents)")
    assert short_rel <= TOLERANCE and long_rel <= TOLERANCE
    assert all(math.isfinite(theirs[i]) and theirs[i] < 0 for i in theirs)
