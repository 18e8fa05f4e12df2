"""The how-to "Add a model block" (docs/extend.md), done: a block written once in ``model/transformer.py`` works
in training, decoding, speculative verification, scoring, quantization and model dirs, with no other file
changed.

The toy block is Primer's ReLU² MLP (So et al. 2021: ``proj(relu(fc(x))²)``). It stands in for
``transformer.MLP`` for each test's duration (``monkeypatch``), as if it had been written there, so every
model these tests build, save or load has it. What the test cannot do without editing ``src/`` is the
config switch that chooses it (a ``ModelConfig`` field, its check and ``family``); the how-to lists those
edits.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from groundup.infer.decode import Decoder
from groundup.infer.engine import Engine
from groundup.infer.generate import generate_tokens
from groundup.infer.sampling import SamplingParams
from groundup.infer.score import ScoreRequest as Request
from groundup.infer.score import score_requests
from groundup.model import transformer
from groundup.model.config import ModelConfig
from groundup.model.io import load_model_dir, save_model_dir
from groundup.model.lora import LoRAConfig, apply_lora
from groundup.model.quant import Int8Linear, QuantConfig, quantize_model
from one_batch import train_on_one_batch

SHAPE = dict(vocab_size=384, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, norm="rmsnorm",
             position="rope", bias=False, init_std=0.2)
GREEDY = SamplingParams(temperature=0, max_new_tokens=12, stop_at_eos=False)
PROMPT = [5, 17, 42, 99, 3, 250, 7, 64]
BUILTIN_MLP = transformer.MLP


class ReLU2MLP(nn.Module):
    """The toy block: an MLP with a squared ReLU. Its linear layers keep the names ``fc`` and ``proj`` of the
    roles they play, so LoRA's targets, tensor parallelism's plan and quantization find them as they are."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.relu(self.fc(x)).square()))


@pytest.fixture(autouse=True)
def toy_block(monkeypatch):
    monkeypatch.setattr(transformer, "MLP", ReLU2MLP)


def toy_model(seed: int = 0, **shape) -> transformer.Transformer:
    torch.manual_seed(seed)
    return transformer.Transformer(ModelConfig(**{**SHAPE, **shape})).eval()


def greedy_by_full_forward(model: nn.Module, ids: list[int], n: int) -> list[int]:
    """Greedy decoding the slow way: the whole sequence through the plain forward for every token."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[-n:]


def test_the_toy_block_is_the_one_that_runs(monkeypatch):
    """Every block has the toy MLP, and it computes something else than the built-in GELU MLP would with the
    same weights (so the other tests here run the toy block, not the built-in one)."""
    model = toy_model()
    assert all(isinstance(block.mlp, ReLU2MLP) for block in model.blocks)
    monkeypatch.setattr(transformer, "MLP", BUILTIN_MLP)
    builtin = transformer.Transformer(model.config).eval()
    builtin.load_state_dict(model.state_dict())  # the same names and shapes
    x = torch.tensor([PROMPT])
    with torch.no_grad():
        assert not torch.allclose(model(x), builtin(x), atol=1e-3)


def test_the_training_step_trains_the_block():
    model = toy_model().train()
    torch.manual_seed(1)
    x = torch.randint(0, SHAPE["vocab_size"], (4, 32))
    before = model.blocks[0].mlp.fc.weight.detach().clone()
    losses = [r.loss for r in train_on_one_batch(model, (x[:, :-1], x[:, 1:]), 8)]
    assert losses[-1] < 0.8 * losses[0]
    assert not torch.equal(before, model.blocks[0].mlp.fc.weight)


def test_decoding_gives_the_full_forward_logits():
    """Prefill and one-token decode steps through the KV cache (the engine's path, weights packed for the
    device) give each position the logits of the plain forward over the whole sequence."""
    model = toy_model()
    ids = PROMPT + [11, 12, 13, 14]
    with torch.no_grad():
        full = model(torch.tensor([ids]))[0]  # (T, V)
    decoder = Decoder(model, num_slots=2)
    prefill = decoder.prefill(1, ids[:8], all_positions=True)  # (8, V)
    torch.testing.assert_close(prefill, full[:8], atol=1e-4, rtol=1e-4)
    for pos in range(8, len(ids)):
        step = decoder.rows([1], [pos], [ids[pos]])[0]
        torch.testing.assert_close(step, full[pos], atol=1e-4, rtol=1e-4)


def test_generation_and_speculative_decoding_run_the_block():
    """`groundup generate`'s path and the engine with a draft (itself a toy-block model) give the tokens of
    greedy decoding by the plain forward."""
    target, draft = toy_model(), toy_model(seed=3, n_layer=1, n_embd=32, n_head=2, n_kv_head=1)
    expected = greedy_by_full_forward(target, PROMPT, GREEDY.max_new_tokens)
    assert list(generate_tokens(target, PROMPT, GREEDY)) == expected
    engine = Engine(target, None, max_seqs=2, draft=draft, draft_tokens=3, threaded=False)
    assert engine.generate(PROMPT, GREEDY)[0].token_ids == expected
    assert engine.stats.draft_tokens_proposed > 0
    same = Engine(target, None, max_seqs=2, draft=target, draft_tokens=3, threaded=False)
    assert same.generate(PROMPT, GREEDY)[0].token_ids == expected
    assert same.stats.draft_acceptance_rate == 1.0


def test_the_scorer_scores_with_the_block():
    model = toy_model()
    context, continuation = tuple(PROMPT), (11, 12, 13)
    (score,) = score_requests(model, [Request(context, continuation)])
    ids = torch.tensor([list(context + continuation)])
    with torch.no_grad():
        logprobs = model(ids[:, :-1])[0].log_softmax(-1)
    expected = sum(float(logprobs[len(context) - 1 + i, t]) for i, t in enumerate(continuation))
    assert score.loglikelihood == pytest.approx(expected, abs=1e-4)
    assert score.tokens == 3


def test_quantization_takes_the_blocks_linear_layers():
    model = toy_model()
    x = torch.tensor([PROMPT])
    with torch.no_grad():
        reference = model(x)
    quantize_model(model, QuantConfig(method="int8"))
    assert all(isinstance(block.mlp.fc, Int8Linear) and isinstance(block.mlp.proj, Int8Linear)
               for block in model.blocks)
    with torch.no_grad():
        quantized = model(x)
    assert (quantized - reference).abs().max() < 0.05 * reference.abs().max()
    # and the quantized model decodes through the engine
    assert len(list(generate_tokens(model, PROMPT, GREEDY))) == GREEDY.max_new_tokens


def test_lora_finds_the_blocks_layers_by_their_names():
    model = toy_model()
    names = apply_lora(model, LoRAConfig(enabled=True))
    assert {f"blocks.{i}.mlp.{part}" for i in range(2) for part in ("fc", "proj")} <= set(names)


def test_a_model_dir_round_trip_keeps_the_block(spine_tokenizer, tmp_path):
    model = toy_model(vocab_size=320)
    out = save_model_dir(tmp_path / "model", model, tokenizer_file=spine_tokenizer, stage="test", config={})
    loaded, _ = load_model_dir(out)
    assert isinstance(loaded.blocks[0].mlp, ReLU2MLP)
    x = torch.tensor([PROMPT])
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_the_how_to_names_files_and_code_that_exist():
    """docs/extend.md's "Add a model block" names files and functions; they must stay where it says."""
    root = Path(__file__).resolve().parents[2]
    section = (root / "docs" / "extend.md").read_text(encoding="utf-8").split("## Add a model block", 1)[1]
    files_part = section.split("### Files", 1)[1].split("Nothing in", 1)[0]
    files = re.findall(r"\*\*`([^`]+)`\*\*", files_part)
    assert "src/groundup/model/transformer.py" in files and "src/groundup/model/config.py" in files
    for path in files:
        if "<" not in path:
            assert (root / path).is_file(), path
    from groundup.infer import kv_cache, weights
    from groundup.interop import hf
    from groundup.model import lora
    from groundup.parallel import apply_tp

    named = [(transformer, "finish_meta_load"), (transformer, "KVCacheStep"),
             (transformer.Transformer, "reset_parameters"), (transformer.Transformer, "hidden_states"),
             (ModelConfig, "family"), (ModelConfig, "mlp_hidden"), (kv_cache, "SlotKVCache"),
             (kv_cache.CacheStep, "update"), (weights, "decode_view"), (apply_tp, "fused_segments"),
             (hf, "hf_architecture")]
    for owner, name in named:
        assert hasattr(owner, name), name
        assert name in section, name
    assert "targets" in {f.name for f in dataclasses.fields(lora.LoRAConfig)}
    assert "def random_config" in (root / "tests" / "plan" / "test_plan_params.py").read_text(encoding="utf-8")
