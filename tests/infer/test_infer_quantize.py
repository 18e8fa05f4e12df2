"""Weight-only quantization: the formats' error bounds, the CPU kernels, the `groundup quantize` stage, and
decoding a quantized model dir through the engine."""

from __future__ import annotations

import pytest
import torch

from groundup.infer import quantize
from groundup.infer.engine import Engine
from groundup.infer.generate import generate_tokens
from groundup.infer.sampling import SamplingParams
from groundup.model import quant
from groundup.model.config import ModelConfig
from groundup.model.io import load_model_dir, save_model_dir
from groundup.model.kernels import woq
from groundup.model.transformer import Transformer


def test_int8_round_trip_is_within_half_a_step():
    w = torch.randn(48, 96) * torch.logspace(-3, 0, 48)[:, None]  # rows of very different scales
    q, scale = quant.quantize_int8(w)
    err = (quant.dequantize_int8(q, scale) - w).abs()
    assert q.dtype == torch.int8 and (err <= scale[:, None] / 2 * (1 + 1e-5)).all()


def test_int4_round_trip_is_within_half_a_step_of_its_group():
    w = torch.randn(32, 128)
    for group in quant.GROUP_SIZES:
        packed, scale, zero = quant.quantize_int4(w, group)
        assert packed.shape == (32, 64) and scale.shape == (32, 128 // group)
        err = (quant.dequantize_int4(packed, scale, zero) - w).abs().view(32, -1, group)
        assert (err <= scale[..., None] / 2 * (1 + 1e-4) + 1e-7).all()
    with pytest.raises(ValueError, match="does not divide"):
        quant.quantize_int4(torch.randn(4, 96), 64)


def activation_rounding_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """How far groundup's kernels may be from x @ w^T (M, N): they round each block of 32 inputs to int8 (a
    step of max |x| / 127 in the block, so half of that at most per input), times the weights' magnitudes."""
    M, K = x.shape
    step = x.view(M, K // 32, 32).abs().amax(-1) / 127  # (M, blocks)
    return (step[:, None, :] / 2 * w.abs().view(w.shape[0], K // 32, 32).sum(-1)[None]).sum(-1)


@pytest.mark.parametrize("kernels", ["groundup", "pytorch"])
def test_quantized_layers_compute_the_dequantized_product_alike_for_every_row(kernels, monkeypatch):
    """Each kernel gives x @ dequantized(W)^T (groundup's within the rounding of its int8 inputs, PyTorch's
    float ones to float precision), and with groundup's a row's result does not depend on the other rows."""
    if kernels == "groundup" and woq() is None:
        pytest.skip("groundup's kernels cannot be built here")
    if kernels == "pytorch":
        monkeypatch.setattr(quant, "woq", lambda: None)
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 80)
    layers = [quant.Int8Linear.from_linear(linear), quant.Int4Linear.from_linear(linear, 32)]
    weights = [quant.dequantize_int8(layers[0].weight, layers[0].weight_scale),
               quant.dequantize_int4(layers[1].weight, layers[1].weight_scale, layers[1].weight_zero)]
    x = torch.randn(7, 128)
    with torch.inference_mode():
        for layer, w in zip(layers, weights, strict=True):
            y = layer(x)
            exact = x @ w.t() + linear.bias
            if kernels == "groundup":
                assert ((y - exact).abs() <= activation_rounding_bound(x, w) * 1.001 + 1e-4).all()
                assert (y - exact).abs().max() > 0  # the inputs were rounded: not the float product
            else:
                torch.testing.assert_close(y, exact, atol=1e-4, rtol=1e-4)
            if kernels == "groundup":  # PyTorch's own kernels are not batch-invariant: the engine pads for them
                for n in range(1, 7):
                    assert torch.equal(layer(x[:n]), y[:n]) and torch.equal(layer(x[n:]), y[n:])


@pytest.fixture(scope="module")
def model_dirs(spine_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    torch.manual_seed(0)
    config = ModelConfig.llama(vocab_size=384, block_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                               init_std=0.1, tie_embeddings=True)
    source = save_model_dir(root / "fp32", Transformer(config), tokenizer_file=spine_tokenizer, stage="test", config={})
    int8 = quantize.run(quantize.Config(model=source, to="int8", out=root / "int8"))
    int4 = quantize.run(quantize.Config(model=source, to="int4", group_size=32, out=root / "int4"))
    return {"fp32": source, "int8": int8, "int4": int4}


def test_quantize_stage_writes_a_model_dir_every_inference_command_loads(model_dirs):
    fp32, _ = load_model_dir(model_dirs["fp32"])
    ids = torch.randint(0, 320, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = fp32(ids)
    scale = reference.abs().max()
    # A bound on the logits, relative to the largest (about twice what this random model shows: 3% and 25%):
    # int8 per channel, int4 in groups of 32 (its head int8).
    for name, bound in (("int8", 0.06), ("int4", 0.5)):
        model, _ = load_model_dir(model_dirs[name])
        assert model.quantization.method == name
        assert isinstance(model.blocks[0].attn.qkv, quant.Int8Linear if name == "int8" else quant.Int4Linear)
        assert model.lm_head.weight.data_ptr() == model.tok_embeddings.weight.data_ptr()  # the tied head
        with torch.inference_mode():
            err = (model(ids) - reference).abs().max() / scale
        assert 0 < err < bound, (name, float(err))
        assert (model_dirs[name] / "quantization.json").is_file()


def test_a_quantized_model_decodes_through_the_engine_batch_invariant(model_dirs):
    model, tokenizer = load_model_dir(model_dirs["int4"])
    params = SamplingParams(temperature=0, max_new_tokens=12, stop_at_eos=False)
    prompts = [tokenizer.encode(t) for t in ("def foo(x):", "import os", "class A:")]
    engine = Engine(model, tokenizer, max_seqs=3, threaded=False)
    alone = [engine.generate(p, params, logprobs=0)[0] for p in prompts]
    assert alone[0].token_ids == list(generate_tokens(model, prompts[0], params, vocab_limit=tokenizer.vocab_size))
    from groundup.infer.engine import Event, Request

    merged = [Event(index=0) for _ in prompts]
    for p, m in zip(prompts, merged, strict=True):
        engine.submit(Request(prompt_ids=p, params=params, logprobs=0, on_event=m.absorb))
    while not all(m.finish_reason for m in merged):
        engine.step()
    for a, b in zip(alone, merged, strict=True):
        assert a.token_ids == b.token_ids and [e.logprob for e in a.logprobs] == [e.logprob for e in b.logprobs]


def test_quantize_refuses_what_it_cannot_do(model_dirs, tmp_path):
    with pytest.raises(ValueError, match="already quantized"):
        quantize.run(quantize.Config(model=model_dirs["int8"], to="int4", out=tmp_path / "again"))
    with pytest.raises(ValueError, match="group size 128 does not divide blocks.0.attn.qkv's width 64"):
        quantize.run(quantize.Config(model=model_dirs["fp32"], to="int4", group_size=128, out=tmp_path / "g"))
    with pytest.raises(ValueError, match="group_size must be one of"):
        quantize.run(quantize.Config(model=model_dirs["fp32"], to="int4", group_size=48, out=tmp_path / "g"))
    with pytest.raises(ValueError, match="never writes over its input"):
        quantize.run(quantize.Config(model=model_dirs["fp32"], to="int8", out=model_dirs["fp32"] / "q"))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "NOTES.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty and is not an earlier quantize output"):
        quantize.run(quantize.Config(model=model_dirs["fp32"], to="int8", out=occupied))
    assert (occupied / "NOTES.txt").read_text() == "mine"
