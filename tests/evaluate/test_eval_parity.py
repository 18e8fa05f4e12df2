"""Parity with lm-evaluation-harness on the same model and the same local task files."""

from __future__ import annotations

import re
import textwrap

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'groundup[eval]')")

from groundup.evaluate.suite import TaskSettings, evaluate_task, load_tasks  # noqa: E402


def write_yaml(folder, mc_file, text_file):
    (folder / "tiny_mc.yaml").write_text(textwrap.dedent(f"""\
        task: tiny_mc
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {mc_file}
        output_type: multiple_choice
        test_split: test
        doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
        doc_to_target: answer
        doc_to_choice: "{{{{choices}}}}"
        metric_list:
          - metric: acc
          - metric: acc_norm
        """))
    (folder / "tiny_text.yaml").write_text(textwrap.dedent(f"""\
        task: tiny_text
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {text_file}
        output_type: loglikelihood_rolling
        test_split: test
        doc_to_text: ""
        doc_to_target: "{{{{text}}}}"
        metric_list:
          - metric: word_perplexity
          - metric: byte_perplexity
          - metric: bits_per_byte
        """))


@pytest.fixture(scope="module")
def lm_eval_results(eval_model_dir, mc_file, text_file, tmp_path_factory, monkeypatch_module):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    import groundup.evaluate.lm_eval  # noqa: F401  (registers "groundup")

    folder = tmp_path_factory.mktemp("yaml")
    write_yaml(folder, mc_file, text_file)
    monkeypatch_module.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch_module.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
    out = simple_evaluate(model="groundup", model_args=f"path={eval_model_dir},batch_size=7",
                          tasks=["tiny_mc", "tiny_text"], task_manager=TaskManager(include_path=str(folder), include_defaults=False),
                          log_samples=False)
    return out["results"]


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def ours(eval_model, spec, **settings):
    model, tokenizer = eval_model
    (task,) = load_tasks([spec])
    results, samples = evaluate_task(model, tokenizer, task, TaskSettings(**settings))
    return results[task.name], samples


def test_multiple_choice_matches_lm_eval(lm_eval_results, eval_model, mc_file):
    theirs = lm_eval_results["tiny_mc"]
    mine, samples = ours(eval_model, mc_file)
    assert mine["n"] == 40
    assert mine["acc"] == pytest.approx(theirs["acc,none"], abs=1e-12)
    assert mine["acc_norm"] == pytest.approx(theirs["acc_norm,none"], abs=1e-12)
    assert mine["acc_stderr"] == pytest.approx(theirs["acc_stderr,none"], abs=1e-9)
    assert mine["acc"] != mine["acc_norm"] or len({s["prediction"] for s in samples}) > 1  # a non-trivial model


def test_perplexity_and_bits_per_byte_match_lm_eval(lm_eval_results, eval_model, text_file):
    theirs = lm_eval_results["tiny_text"]
    mine, _ = ours(eval_model, text_file)
    assert mine["bits_per_byte"] == pytest.approx(theirs["bits_per_byte,none"], rel=1e-6, abs=1e-6)
    assert mine["byte_perplexity"] == pytest.approx(theirs["byte_perplexity,none"], rel=1e-6)
    assert mine["word_perplexity"] == pytest.approx(theirs["word_perplexity,none"], rel=1e-6)


@pytest.fixture(scope="module")
def lm_eval_hf_results(eval_model, eval_model_dir, mc_file, text_file, tmp_path_factory, monkeypatch_module):
    """lm-eval's own HF backend on a transformers copy of the model (not our adapter)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from groundup.evaluate.hf_reference import hf_tokenizer, to_transformers

    folder = tmp_path_factory.mktemp("yaml_hf")
    write_yaml(folder, mc_file, text_file)
    monkeypatch_module.setenv("HF_DATASETS_OFFLINE", "1")
    hf_model = to_transformers(eval_model[0]).float()
    lm = HFLM(pretrained=hf_model, tokenizer=hf_tokenizer(eval_model_dir / "tokenizer.json"), batch_size=32,
              max_length=eval_model[0].config.block_size, device="cpu")
    out = simple_evaluate(model=lm, tasks=["tiny_mc", "tiny_text"], task_manager=TaskManager(include_path=str(folder), include_defaults=False),
                          log_samples=False)
    return out["results"]


def test_multiple_choice_matches_lm_eval_hf_backend(lm_eval_hf_results, eval_model, mc_file):
    theirs = lm_eval_hf_results["tiny_mc"]
    mine, _ = ours(eval_model, mc_file, batch_size=32)
    assert mine["acc"] == pytest.approx(theirs["acc,none"], abs=1e-12)
    assert mine["acc_norm"] == pytest.approx(theirs["acc_norm,none"], abs=1e-12)


def test_bits_per_byte_matches_lm_eval_hf_backend(lm_eval_hf_results, eval_model, text_file):
    theirs = lm_eval_hf_results["tiny_text"]
    mine, _ = ours(eval_model, text_file)
    assert mine["bits_per_byte"] == pytest.approx(theirs["bits_per_byte,none"], rel=1e-6, abs=1e-6)
    assert mine["word_perplexity"] == pytest.approx(theirs["word_perplexity,none"], rel=1e-6)


def test_lm_eval_command_line_finds_the_groundup_model(eval_model, eval_model_dir, mc_file, text_file, tmp_path,
                                                       monkeypatch, capsys):
    """`groundup lm-eval --model groundup ...` is lm-eval's own CLI; its table shows our scores."""
    import functools

    import lm_eval.tasks

    from groundup import cli

    folder = tmp_path / "yaml"
    folder.mkdir()
    write_yaml(folder, mc_file, text_file)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # only the local task folder is indexed (lm-eval's thousands of built-in YAMLs take ~20 s to scan)
    monkeypatch.setattr(lm_eval.tasks, "TaskManager",
                        functools.partial(lm_eval.tasks.TaskManager, include_defaults=False))
    assert cli.main(["lm-eval", "--model", "groundup", "--model_args", f"path={eval_model_dir}", "--device", "cpu",
                     "--tasks", "tiny_mc", "--include_path", str(folder), "--batch_size", "5"]) == 0
    table = capsys.readouterr().out
    mine, _ = ours(eval_model, mc_file)
    for metric in ("acc", "acc_norm"):
        value = re.search(rf"\|{metric}\s*\|↑\s*\|\s*([0-9.]+)\|", table)
        assert value, table
        assert float(value.group(1)) == pytest.approx(mine[metric], abs=1e-4)


def write_mmlu_layout(folder, rng_seed: int = 3):
    """One MMLU subject twice: the release's header-less CSVs (for groundup) and JSONL (for lm-eval)."""
    import json
    import random

    words = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "log", "red", "blue", "big", "small", "house", "tree", "river", "bird", "flew", "over", "near"]

    def sentence(rng, n):
        return " ".join(rng.choice(words) for _ in range(n))

    rng = random.Random(rng_seed)
    rows = {split: [[sentence(rng, rng.randint(3, 9)) + "?"] + [sentence(rng, rng.randint(1, 3)) for _ in range(4)]
                    + ["ABCD"[rng.randrange(4)]] for _ in range(n)] for split, n in (("test", 10), ("dev", 7))}
    for split, split_rows in rows.items():
        (folder / split).mkdir()
        (folder / split / f"high_school_biology_{split}.csv").write_text(
            "".join(",".join(f'"{c}"' for c in row) + "\n" for row in split_rows))
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"question": r[0], "choices": r[1:5],
                                                                   "answer": "ABCD".index(r[5])}) + "\n"
                                                       for r in split_rows))
    # lm-eval's own MMLU template (tasks/mmlu/default/_default_template_yaml), its sampler first_n
    (folder / "yaml").mkdir()
    (folder / "yaml" / "tiny_mmlu.yaml").write_text(textwrap.dedent(f"""\
        task: tiny_mmlu
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {folder / 'test.jsonl'}
            dev: {folder / 'dev.jsonl'}
        test_split: test
        fewshot_split: dev
        fewshot_config:
          sampler: first_n
        output_type: multiple_choice
        description: "The following are multiple choice questions (with answers) about high school biology.\\n\\n"
        doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
        doc_to_choice: ["A", "B", "C", "D"]
        doc_to_target: answer
        metric_list:
          - metric: acc
        """))


def test_five_shot_mmlu_matches_lm_eval_hf_backend_per_item(eval_model, eval_model_dir, tmp_path, monkeypatch):
    """5-shot MMLU layout: the same prompts as lm-eval's (first_n sampler), so every choice's log-likelihood agrees."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from groundup.evaluate.hf_reference import hf_tokenizer, to_transformers

    write_mmlu_layout(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    lm = HFLM(pretrained=to_transformers(eval_model[0]).float(), tokenizer=hf_tokenizer(eval_model_dir / "tokenizer.json"),
              batch_size=16, max_length=eval_model[0].config.block_size, device="cpu")
    out = simple_evaluate(model=lm, tasks=["tiny_mmlu"], num_fewshot=5, log_samples=True,
                          task_manager=TaskManager(include_path=str(tmp_path / "yaml"), include_defaults=False))
    theirs = sorted(out["samples"]["tiny_mmlu"], key=lambda s: s["doc_id"])
    mine, samples = ours(eval_model, tmp_path, num_fewshot=5, batch_size=16)
    assert len(samples) == len(theirs) == 10
    for m, t in zip(samples, theirs, strict=True):
        assert [m["prompt"]] * 4 == [a[0] for a in t["arguments"]]  # the same 5-shot prompt
        assert m["loglikelihoods"] == pytest.approx([r[0][0] for r in t["resps"]], abs=1e-6)
    assert mine["acc"] == pytest.approx(out["results"]["tiny_mmlu"]["acc,none"], abs=1e-12)
