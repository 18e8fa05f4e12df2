"""No stage deletes what it did not write: for every stage with ``--out``, a user's file and the stage's own input
under ``--out`` survive (the run is refused), and a non-empty folder that is not the stage's earlier output needs
``overwrite``, which still removes nothing but entries of the stage's own names."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from groundup.artifacts import atomic_dir, prepare_out

NOTE = "my notes: do not lose these\n"


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` and its content's hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def place(source: Path, home: Path, name: str) -> Path:
    """A copy of a fixture (file or folder) at ``home/name``: the stage's input, wherever the test wants it."""
    home.mkdir(parents=True, exist_ok=True)
    dest = home / name
    if not dest.exists():
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, dest)
    return dest


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def tiny_loop():
    from groundup.train.loop import LoopConfig

    return LoopConfig(max_steps=1, log_every=1, eval_every=0, checkpoint_every=0, progress_bar=False)


# Each stage: run(out, home, fx, overwrite) with its inputs placed in ``home``.


def curate(out, home, fx, overwrite):
    from groundup.curate import run as stage

    stage.run(stage.Config(input=[str(place(fx["corpus"], home, "in.jsonl"))], out=out, workers=1,
                           overwrite=overwrite))


def tokenizer(out, home, fx, overwrite):
    from groundup.tokenizer import run as stage

    stage.run(stage.Config(data=str(place(fx["corpus"], home, "corpus.jsonl")), out=out, vocab_size=300,
                           overwrite=overwrite))


def tokenize(out, home, fx, overwrite):
    from groundup.tokens import tokenize as stage

    stage.run(stage.Config(data=str(fx["corpus"]), tokenizer=place(fx["tokenizer"], home, "tokenizer"), out=out,
                           workers=1, overwrite=overwrite))


def pretrain(out, home, fx, overwrite):
    from groundup.model.config import ModelConfig
    from groundup.train import pretrain as stage

    model = ModelConfig.from_name("tiny-llama", n_layer=1, n_embd=32, n_head=4, n_kv_head=2, block_size=32)
    stage.run(stage.Config(tokens=place(fx["tokens"], home, "tokens"), out=out, model=model, batch_size=2,
                           train=tiny_loop(), device="cpu", overwrite=overwrite))


def consolidate(out, home, fx, overwrite):
    from groundup.train import consolidate as stage

    checkpoint = home / "run" / "checkpoints" / "step-000001"
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / "state.json").write_text('{"step": 1}\n', encoding="utf-8")
    stage.run(stage.Config(checkpoint=home / "run", out=out, overwrite=overwrite))


def finetune(method: str, records: list[dict]) -> Callable:
    def run(out, home, fx, overwrite):
        import importlib

        stage = importlib.import_module(f"groundup.finetune.{method}")
        data = {"tokens": place(fx["tokens"], home, "tokens")} if method == "continued" else \
            {"data": write_jsonl(home / "data.jsonl", records)}
        stage.run(stage.Config(model=place(fx["model"], home, "base"), out=out, train=tiny_loop(), batch_size=2,
                               device="cpu", overwrite=overwrite, **data))

    return run


def evaluate(out, home, fx, overwrite):
    from groundup.evaluate import run as stage

    tasks = write_jsonl(home / "task.jsonl", [{"text": "def f(x):\n    return x\n"}])
    stage.run(stage.Config(model=place(fx["model"], home, "model"), tasks=[str(tasks)], out=out, progress=False,
                           overwrite=overwrite))


def export(fmt: str) -> Callable:
    def run(out, home, fx, overwrite):
        from groundup.interop import export as stage

        stage.run(stage.Config(model=place(fx["model"], home, "model"), out=out, format=fmt, overwrite=overwrite))

    return run


def quantize(out, home, fx, overwrite):
    from groundup.infer import quantize as stage

    stage.run(stage.Config(model=place(fx["model"], home, "model"), to="int8", out=out, overwrite=overwrite))


def import_hf(out, home, fx, overwrite):
    from groundup.interop import importer as stage

    folder = home / "hf"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}\n', encoding="utf-8")
    stage.run(stage.Config(model=folder, out=out, overwrite=overwrite))


def pipeline(out, home, fx, overwrite):
    from groundup import run as stage

    stage.run(stage.Config(data=str(place(fx["corpus"], home, "corpus.jsonl")), out=out, overwrite=overwrite))


def plan(out, home, fx, overwrite):
    from groundup.plan import run as stage

    config = place(fx["model"] / "config.json", home, "config.json")
    stage.run(stage.Config(model=str(config), gpu="h100", tokens=1e6, out=out, overwrite=overwrite))


QA = [{"instruction": f"say {w}", "output": w} for w in ("yes", "no", "maybe", "never")]
DIR_STAGES = {
    "curate": curate, "tokenizer": tokenizer, "tokenize": tokenize, "pretrain": pretrain,
    "consolidate": consolidate,
    "finetune-sft": finetune("sft", QA),
    "finetune-dpo": finetune("dpo", [{"prompt": q["instruction"], "chosen": q["output"], "rejected": "?"}
                                     for q in QA]),
    "finetune-classify": finetune("classify", [{"text": q["instruction"], "label": i % 2} for i, q in enumerate(QA)]),
    "finetune-continue": finetune("continued", []),
    "evaluate": evaluate, "export-hf": export("hf"), "export-gguf": export("gguf"), "import": import_hf,
    "quantize": quantize,
    "run": pipeline, "plan": plan,
}


@pytest.fixture(scope="module")
def fx(spine_corpus, spine_tokenizer, spine_tokens, spine_model) -> dict[str, Path]:
    return {"corpus": spine_corpus, "tokenizer": spine_tokenizer, "tokens": spine_tokens, "model": spine_model}


@pytest.mark.parametrize("stage", DIR_STAGES)
def test_a_folder_holding_the_stages_input_is_never_written_even_with_overwrite(stage, fx, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "NOTES.txt").write_text(NOTE, encoding="utf-8")
    before = None
    for overwrite in (False, False, True):  # the first call places the input under out
        with pytest.raises(ValueError, match=rf"out {out} contains the .* input .*never writes over its input"):
            DIR_STAGES[stage](out, out, fx, overwrite)
        assert before is None or snapshot(out) == before
        before = snapshot(out)
    assert (out / "NOTES.txt").read_text(encoding="utf-8") == NOTE and len(before) > 1


@pytest.mark.parametrize("stage", DIR_STAGES)
def test_a_users_folder_is_refused_with_what_it_holds(stage, fx, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "NOTES.txt").write_text(NOTE, encoding="utf-8")
    with pytest.raises(FileExistsError, match=rf"out {out} is not empty .*NOTES\.txt.*--overwrite true"):
        DIR_STAGES[stage](out, tmp_path / "inputs", fx, False)
    assert snapshot(out) == {"NOTES.txt": hashlib.sha256(NOTE.encode()).hexdigest()}


@pytest.mark.parametrize("stage", ["tokenizer", "export-hf", "export-gguf", "evaluate", "plan"])
def test_overwrite_writes_beside_a_users_file_and_a_rerun_replaces_only_the_stages_own(stage, fx, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "NOTES.txt").write_text(NOTE, encoding="utf-8")
    DIR_STAGES[stage](out, tmp_path / "inputs", fx, True)
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8"))["stage"] == stage.split("-")[0]
    DIR_STAGES[stage](out, tmp_path / "inputs", fx, False)  # now an earlier output of the stage: run again
    assert (out / "NOTES.txt").read_text(encoding="utf-8") == NOTE


def test_export_into_the_model_dir_itself_is_refused(fx, tmp_path):
    model = place(fx["model"], tmp_path, "model")
    before = snapshot(model)
    for fmt in ("hf", "gguf"):
        with pytest.raises(ValueError, match=rf"out {model} is the export input"):
            export(fmt)(model, tmp_path, fx, True)
    assert snapshot(model) == before


# Stages whose --out is one file: run(out, home, fx, overwrite); the input they read lives in home.


def generate(out, home, fx, overwrite):
    from groundup.infer import generate as stage
    from groundup.infer.sampling import SamplingParams

    stage.run(stage.Config(model=place(fx["model"], home, "model"), prompt="def ", out=out, overwrite=overwrite,
                           sampling=SamplingParams(max_new_tokens=2, temperature=0.0)))


def classify(out, home, fx, overwrite):
    from groundup.infer import classify as stage

    texts = home / "texts.jsonl"
    if not texts.exists():
        write_jsonl(texts, [{"text": "an input"}])
    stage.run(stage.Config(model=place(fx["model"], home, "model"), input=texts, out=out, overwrite=overwrite))


def report(out, home, fx, overwrite):
    from groundup.report import run as stage

    stage.run(stage.Config(runs=[place(fx["model"], home, "model")], out=out, overwrite=overwrite))


def export_gguf_file(out, home, fx, overwrite):
    export("gguf")(out, home, fx, overwrite)


FILE_STAGES = {"generate": (generate, "model/config.json"), "classify": (classify, "texts.jsonl"),
               "report": (report, "model/metrics.jsonl"), "export-gguf-file": (export_gguf_file, "Modelfile")}
"""Each file stage and a path (under home) it must never replace: a file of its input, or one beside its output."""


@pytest.mark.parametrize("stage", FILE_STAGES)
def test_a_file_stage_never_replaces_a_users_file_nor_its_input(stage, fx, tmp_path):
    run, guarded = FILE_STAGES[stage]
    home = tmp_path / "home"
    home.mkdir()
    users = home / ("model.gguf" if stage == "export-gguf-file" else "notes.jsonl")
    users.write_text(NOTE, encoding="utf-8")
    with pytest.raises(FileExistsError, match=rf"out {users} exists and is not an earlier"):
        run(users, home, fx, False)
    assert users.read_text(encoding="utf-8") == NOTE
    if stage == "export-gguf-file":  # a user's Modelfile beside the GGUF to write
        (home / "Modelfile").write_text(NOTE, encoding="utf-8")
        with pytest.raises(FileExistsError, match="Modelfile exists and is not an earlier export"):
            run(home / "new.gguf", home, fx, False)
        assert (home / "Modelfile").read_text(encoding="utf-8") == NOTE and not (home / "new.gguf").exists()
        return
    place(fx["model"], home, "model")
    if stage == "classify":
        write_jsonl(home / "texts.jsonl", [{"text": "an input"}])
    guarded_path = home / guarded
    before = guarded_path.read_bytes()
    with pytest.raises(ValueError, match=r"never writes over its input"):
        run(guarded_path, home, fx, True)
    assert guarded_path.read_bytes() == before


def test_prepare_out_knows_an_unfinished_run_and_a_finished_one(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "step-000002").mkdir(parents=True)
    (out / "train.yaml").write_text("x: 1\n", encoding="utf-8")
    assert prepare_out(out, stage="pretrain", unfinished=("train.yaml", "checkpoints")) is True
    (out / "manifest.json").write_text('{"stage": "finetune-sft"}\n', encoding="utf-8")
    with pytest.raises(FileExistsError, match=r"a finetune-sft output: checkpoints/, manifest\.json, train\.yaml"):
        prepare_out(out, stage="pretrain", unfinished=("train.yaml", "checkpoints"))
    assert prepare_out(out, stage="finetune-sft") is True
    assert prepare_out(tmp_path / "new", stage="pretrain") is False
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        prepare_out(tmp_path / "file", stage="plan")
    with pytest.raises(ValueError, match="is inside the plan input"):
        prepare_out(out / "checkpoints" / "plan", stage="plan", inputs=[out])


def test_atomic_dir_replaces_only_a_pure_earlier_output_and_otherwise_keeps_what_is_not_its_own(tmp_path):
    final = tmp_path / "tok"
    for content in ("one", "two"):
        with atomic_dir(final, previous=final.exists(), names={"a.json", "old.json"}) as tmp:
            (tmp / "a.json").write_text(content, encoding="utf-8")
            if content == "one":
                (tmp / "old.json").write_text("stale", encoding="utf-8")
    assert sorted(p.name for p in final.iterdir()) == ["a.json"]  # replaced whole: the stale file went with it
    (final / "NOTES.txt").write_text(NOTE, encoding="utf-8")
    (final / "old.json").write_text("stale", encoding="utf-8")
    with atomic_dir(final, previous=True, names={"a.json", "old.json"}) as tmp:
        (tmp / "a.json").write_text("three", encoding="utf-8")
    assert snapshot(final).keys() == {"a.json", "NOTES.txt"} and (final / "a.json").read_text() == "three"
    with atomic_dir(final, previous=False, names={"a.json"}) as tmp:  # a folder not its own (--overwrite)
        (tmp / "a.json").write_text("four", encoding="utf-8")
    assert (final / "NOTES.txt").read_text(encoding="utf-8") == NOTE and (final / "a.json").read_text() == "four"
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]  # no temporary sibling left
