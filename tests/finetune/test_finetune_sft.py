"""Instruction SFT: a tiny model learns a held-out synthetic task; metrics, template, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from finetune_helpers import (
    assert_same_weights,
    fruit_items,
    interrupted_then_resumed,
    loop,
    make_base,
    write_jsonl,
)

from groundup.finetune import sft
from groundup.finetune.data import ExampleBatches
from groundup.model.io import load_model_dir
from groundup.tokenizer.chat import CHAT_TEMPLATE_FILE, DEFAULT_CHAT_TEMPLATE, render_chat
from groundup.train.optim import OptimConfig


def chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


@torch.no_grad()
def greedy_answer(model, tokenizer, question: str, max_new: int = 12) -> str:
    ids = tokenizer.encode_with_specials(render_chat([{"role": "user", "content": question}],
                                                      add_generation_prompt=True))
    end = tokenizer.token_to_id("<|im_end|>")
    x, out = torch.tensor([ids]), []
    for _ in range(max_new):
        nxt = int(model(x)[0, -1].argmax())
        if nxt == end:
            break
        out.append(nxt)
        x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
    return tokenizer.decode(out)


def exact_answers(model_dir, items) -> int:
    model, tokenizer = load_model_dir(model_dir)
    return sum(greedy_answer(model, tokenizer, q) == a for q, a in items)


def test_sft_answers_held_out_items_the_base_cannot(base_llama, tmp_path):
    items = fruit_items()
    train, held_out = items[:104], items[104:]
    # Alpaca and chat records mixed: both shapes feed the same trainer.
    records = [chat(q, a) if i % 2 else {"instruction": q, "input": "", "output": a}
               for i, (q, a) in enumerate(train)]
    data = write_jsonl(tmp_path / "train.jsonl", records)
    out = sft.run(sft.Config(model=base_llama, data=data, out=tmp_path / "sft", batch_size=16, val_fraction=0.1,
                             device="cpu", optim=OptimConfig(lr=6e-3, warmup_steps=10, weight_decay=0.0),
                             train=loop(max_steps=150, log_every=25, eval_every=75, checkpoint_every=0)))
    assert exact_answers(base_llama, held_out) == 0
    assert exact_answers(out, held_out) >= 0.75 * len(held_out)  # pairs never seen in training

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val) == 2 and val[-1] < val[0]
    assert (out / CHAT_TEMPLATE_FILE).read_text() == DEFAULT_CHAT_TEMPLATE
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["examples"] == 104 and stats["skipped"] == 0
    assert json.loads((out / "manifest.json").read_text())["stage"] == "finetune-sft"


def test_sft_resume_is_exact(base_gpt2, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "train.jsonl", [chat(q, a) for q, a in fruit_items()[:40]])

    def make(out, resume):
        return sft.Config(model=base_gpt2, data=data, out=out, batch_size=4, device="cpu",
                          optim=OptimConfig(lr=1e-3, warmup_steps=2), train=loop(resume=resume))

    straight, resumed = interrupted_then_resumed(sft.run, make, tmp_path, monkeypatch, ExampleBatches)
    assert_same_weights(straight, resumed)
    lines = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == list(range(1, 7))
    timing = {"elapsed_s", "tokens_per_s"}

    def rows(run_dir):
        return [{k: v for k, v in json.loads(x).items() if k not in timing}
                for x in (run_dir / "metrics.jsonl").read_text().splitlines()]

    assert rows(resumed) == rows(straight)  # the final evaluation's row once, as in the straight run

    # the finished dir again, with the same config: nothing is loaded, trained or written
    before = {p.name: p.read_bytes() for p in straight.iterdir() if p.is_file()}

    def no_setup(*args, **kwargs):
        raise AssertionError("a finished run was set up again")

    monkeypatch.setattr(sft.common, "setup", no_setup)
    assert sft.run(make(straight, "auto")) == straight
    assert {p.name: p.read_bytes() for p in straight.iterdir() if p.is_file()} == before


def varied_chats(n: int, seed: int = 0) -> list[dict]:
    """Conversations of very different lengths (a few words to a few dozen), as real chat data has."""
    import random

    rng = random.Random(seed)
    items = fruit_items(seed)
    return [chat(" ".join([q] * rng.choice([1, 1, 1, 3])), " ".join([a] * rng.choice([1, 1, 2, 8])))
            for q, a in (items * (n // len(items) + 1))[:n]]


@pytest.fixture(scope="module")
def long_base(spine_tokenizer, tmp_path_factory):
    """A tiny Llama-style base with room for several conversations in a row."""
    return make_base(tmp_path_factory.mktemp("ft") / "base-long", spine_tokenizer, "llama", block_size=256)


def test_packed_conversations_score_exactly_as_they_do_alone(long_base, tmp_path):
    from groundup.finetune.data import DataStats, collate_rows, pack_examples
    from groundup.tokens.datasets import IGNORE_INDEX

    model, tokenizer = load_model_dir(long_base)
    model.eval()
    data = write_jsonl(tmp_path / "train.jsonl", varied_chats(24))
    examples = sft.load_examples(data, tokenizer, DEFAULT_CHAT_TEMPLATE, 256, DataStats(), False)
    rows = pack_examples([len(e) - 1 for e in examples], 256, seed=0)
    assert sorted(i for row in rows for i in row) == list(range(len(examples)))
    assert max(len(row) for row in rows) > 2 and all(sum(len(examples[i]) - 1 for i in r) <= 256 for r in rows)

    def token_losses(x, y, segments=None):
        logits = model(x, segments=segments)
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, ignore_index=IGNORE_INDEX,
                                                 reduction="none")

    with torch.no_grad():
        x, y, segments = collate_rows([[examples[i] for i in row] for row in rows], pad_id=0)
        packed = token_losses(x, y, segments)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                alone_x, alone_y, _ = collate_rows([[examples[i]]], pad_id=0)
                alone = token_losses(alone_x, alone_y)[0]
                n = len(examples[i]) - 1
                torch.testing.assert_close(packed[r, at:at + n], alone, rtol=1e-5, atol=1e-5)
                at += n
        # without the document mask a packed conversation sees the ones before it: a different loss
        leaky = token_losses(x, y)
        assert not torch.allclose(leaky, packed, atol=1e-3)


def test_sft_packing_fills_rows_and_resumes_exactly(long_base, base_gpt2, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "train.jsonl", varied_chats(60))

    def make(out, resume, packing=True, model=long_base):
        return sft.Config(model=model, data=data, out=out, batch_size=2, device="cpu", packing=packing,
                          val_fraction=0.1, optim=OptimConfig(lr=1e-3, warmup_steps=2), train=loop(resume=resume))

    straight, resumed = interrupted_then_resumed(sft.run, make, tmp_path, monkeypatch, ExampleBatches)
    assert_same_weights(straight, resumed)
    packed = json.loads((straight / "manifest.json").read_text())["result"]["packing"]
    padded = json.loads((sft.run(make(tmp_path / "padded", None, packing=False)) / "manifest.json").read_text())
    padded = padded["result"]["packing"]
    assert packed["packed"] and packed["rows"] < 54 // 2  # 54 training conversations, several to a row
    assert packed["efficiency"] > 0.97 and packed["efficiency"] > padded["efficiency"]
    lines = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert all(0.9 < r["packing_efficiency"] <= 1 for r in lines if "loss" in r)
    with pytest.raises(ValueError, match="packing needs RoPE"):
        sft.run(make(tmp_path / "gpt2", None, model=base_gpt2))
