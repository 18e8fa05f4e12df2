"""Continued pretraining: held-out loss falls from the base's, the schedule is re-warmed, resume is exact;
and the `groundup finetune` command line."""

from __future__ import annotations

import json

import pytest
from finetune_helpers import (
    assert_same_weights,
    fruit_items,
    interrupted_then_resumed,
    loop,
    make_base,
    write_jsonl,
)

from groundup import cli
from groundup.evaluate.lm import score_shard
from groundup.finetune import continued
from groundup.model.io import load_model_dir
from groundup.tokens.datasets import RandomWindows, load_tokens
from groundup.train.optim import OptimConfig


@pytest.fixture(scope="module")
def spine_base(spine_tokenizer, tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("ft") / "base", spine_tokenizer, "gpt2", block_size=32)


def config(base, tokens, out, resume=None, steps=None):
    return continued.Config(model=base, tokens=tokens, out=out, batch_size=4, device="cpu", eval_windows=4,
                            optim=OptimConfig(lr=3e-3, warmup_steps=4), train=loop(resume=resume, **(steps or {})))


def test_continued_pretraining_lowers_held_out_loss_with_a_rewarmed_schedule(spine_base, spine_tokens, tmp_path):
    out = continued.run(config(spine_base, spine_tokens, tmp_path / "cont",
                               steps={"max_steps": 12, "eval_every": 0, "checkpoint_every": 0}))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]
    assert lrs[:4] == pytest.approx([3e-3 * k / 4 for k in (1, 2, 3, 4)])  # warmup from zero again
    assert lrs[-1] < lrs[4]  # then decay
    model, _ = load_model_dir(spine_base)
    eos_id = json.loads((spine_tokens / "meta.json").read_text())["eos_id"]
    sample = score_shard(model, load_tokens(spine_tokens, "val"), eos_id, batch_size=4, max_windows=4)
    base_loss = -sample.loglikelihood / sample.tokens
    result = json.loads((out / "result.json").read_text())
    assert result["val_loss"] < base_loss - 0.3  # the same held-out windows, scored before and after
    assert json.loads((out / "manifest.json").read_text())["stage"] == "finetune-continue"


def test_continued_resume_is_exact(spine_base, spine_tokens, tmp_path, monkeypatch):
    straight, resumed = interrupted_then_resumed(
        continued.run, lambda out, resume: config(spine_base, spine_tokens, out, resume), tmp_path, monkeypatch,
        RandomWindows)
    assert_same_weights(straight, resumed)


def test_tokens_from_another_tokenizer_are_refused(spine_tokens, base_gpt2, tmp_path):
    import shutil

    other = tmp_path / "tokens"
    shutil.copytree(spine_tokens, other)
    meta = json.loads((other / "meta.json").read_text())
    fake = tmp_path / "other_tokenizer.json"
    fake.write_text((base_gpt2 / "tokenizer.json").read_text().replace('"<|reserved_7|>"', '"<|other|>"'))
    meta["tokenizer"] = str(fake)
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="differs from"):
        continued.run(config(base_gpt2, other, tmp_path / "out"))


def test_finetune_command_line(base_gpt2, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", [{"instruction": q, "output": a} for q, a in fruit_items()[:20]])
    code = cli.main(["finetune", "sft", "--model", str(base_gpt2), "--data", str(data), "--out", str(tmp_path / "o"),
                     "--lora.enabled", "true", "--lora.rank", "2", "--train.max_steps", "2",
                     "--train.progress_bar", "false", "--batch_size", "4", "--device", "cpu"])
    assert code == 0 and (tmp_path / "o" / "adapter" / "adapter_config.json").is_file()
    assert cli.main(["finetune", "nonsense"]) == 2
    assert cli.main(["finetune", "--help"]) == 0
    assert "dpo" in capsys.readouterr().out
