"""`groundup plan` end to end: files, table, JSON, flags, and clear errors on bad input."""

from __future__ import annotations

import json

import pytest

from groundup.model.config import ModelConfig
from groundup.plan import hardware
from groundup.plan.params import count_parameters
from groundup.plan.run import Config, build_plan, resolve_model, run


def test_run_writes_plan_json_png_and_prints_a_table(tmp_path, capsys):
    out = run(Config(model="tiny-gpt2", tokens=1e8, gpu="a100", gpus=2, out=tmp_path / "plan"))
    assert {p.name for p in out.iterdir()} == {"plan.json", "plan.png", "config.yaml", "manifest.json"}
    plan = json.loads((out / "plan.json").read_text())
    assert plan["parameters"]["total"] == count_parameters(ModelConfig.from_name("tiny-gpt2")).total
    assert plan["compute"]["tokens"] == 1e8
    assert plan["memory"]["chosen"]["fits"] is True
    assert (out / "plan.png").read_bytes()[:4] == b"\x89PNG"
    table = capsys.readouterr().out
    for section in ("parameters", "compute", "time and cost", "training memory", "interconnect", "inference"):
        assert section in table


def test_json_flag_prints_json(tmp_path, capsys):
    run(Config(model="tiny-llama", gpu="h100", json=True, out=tmp_path, png=tmp_path / "x.png"))
    plan = json.loads(capsys.readouterr().out)
    assert plan["compute"]["tokens_source"].startswith("chinchilla")
    assert plan["compute"]["tokens"] == pytest.approx(20 * plan["parameters"]["total"])
    assert (tmp_path / "x.png").is_file()


def test_published_figures_through_the_plan():
    cfg = Config(model="llama-2-7b", tokens=2e12, gpu="a100", gpus=8, inference_precision="fp16",
                 context=4096)
    acc = hardware.with_overrides(hardware.get_accelerator("a100"), bandwidth=1.7e12)
    plan = build_plan(cfg, resolve_model(cfg), acc)
    assert plan["compute"]["flops_6nd"] == pytest.approx(8.1e22, rel=0.005)
    assert plan["memory"]["chosen"]["bytes_per_param"] == 16
    assert plan["inference"]["weights"]["fp16"]["exact"] / 2**30 == pytest.approx(12.55, abs=0.01)
    assert plan["inference"]["kv_cache_bytes"] == 2 * 2**30
    assert plan["inference"]["decode_empty_cache"]["tokens_per_s"] == pytest.approx(127, rel=0.02)


def test_cpu_plan_uses_the_measured_rate(tmp_path):
    cfg = Config(model="tiny-gpt2", gpu="cpu", precision="fp32", tokens=1e6, mfu=0.5)
    acc = hardware.cpu_accelerator(measure_size=128)
    plan = build_plan(cfg, resolve_model(cfg), acc)
    assert plan["hardware"]["measured"] is True
    assert plan["time_cost"]["energy_kwh"] is None  # no published power for a CPU
    expected = plan["compute"]["training_flops"] / (acc.peak_flops * 0.5)
    assert plan["time_cost"]["wall_clock_hours"] * 3600 == pytest.approx(expected)


def test_model_from_a_config_json_with_overrides(tmp_path):
    path = tmp_path / "model" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"name": "mine", "n_layer": 2, "n_head": 2, "n_embd": 64, "vocab_size": 100}))
    model = resolve_model(Config(model=str(tmp_path), n_layer=3))
    assert model == ModelConfig(name="mine", n_layer=3, n_head=2, n_embd=64, vocab_size=100)


def test_flags_parse_into_the_config():
    from jsonargparse import ArgumentParser

    from groundup import config as config_io

    parser = config_io.build_parser(Config)
    ns = parser.parse_args(config_io.normalize_flags(
        ["--model", "llama-2-7b", "--tokens", "2e12", "--gpu", "h100", "--gpus", "8", "--sharding", "fsdp",
         "--activation-checkpointing", "true", "--micro-batch", "2"]))
    init = ArgumentParser.instantiate_classes(parser, ns)
    cfg = Config(**{k: v for k, v in vars(init).items() if k != "config"})
    assert cfg.tokens == 2e12 and cfg.gpus == 8 and cfg.sharding == "fsdp" and cfg.activation_checkpointing
    assert cfg.micro_batch == 2


@pytest.mark.parametrize(("changes", "message"), [
    ({"n_layer": 0}, "n_layer must be positive"),
    ({"n_embd": -64}, "n_embd must be positive"),
    ({"n_head": 5}, "divisible by n_head"),
    ({"n_kv_head": 3}, "multiple of n_kv_head"),
    ({"gpu": "h900"}, "unknown GPU 'h900'; known: .*a100"),
    ({"gpus": 0}, "gpus must be positive"),
    ({"tokens": -1.0}, "tokens must be positive"),
    ({"micro_batch": 0}, "micro_batch must be positive"),
    ({"mfu": 1.5}, r"mfu must be in \(0, 1\]"),
    ({"seq_len": 100_000}, "exceeds the model's block_size"),
    ({"model": "gpt5"}, "unknown model 'gpt5'"),
    ({"interconnect": "smoke-signals"}, "unknown interconnect"),
    ({"tp": 0}, "tp must be positive"),
    ({"pp": 3, "gpus": 3}, "n_layer=4 does not split into pp=3 stages"),
    ({"cp": 3, "gpus": 3, "seq_len": 100}, r"seq_len=100 is not divisible by 2 x cp = 6"),
    ({"tp": 4, "gpus": 6}, "tp x pp x cp = 4 x 1 x 1 = 4 does not divide gpus=6"),
    ({"pp": 2, "gpus": 2, "pp_schedule": "PipeDream"}, "unknown pipeline schedule 'PipeDream'"),
    ({"cp": 2, "gpus": 2, "flash_attention": False}, "cp > 1 needs flash_attention"),
])
def test_bad_input_gets_a_clear_error(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        run(Config(**{"model": "tiny-gpt2", "out": tmp_path, **changes}))


def test_plan_with_pipeline_and_context_parallelism(tmp_path, capsys):
    from groundup.plan.parallelism import bubble_fraction

    # 16 devices = pp 2 x dp 2 x cp 2 x tp 2, 4 pipeline micro-batches (grad_accum), 1F1B: bubble 1/(4+1) = 0.2
    run(Config(model="tiny-llama", tokens=1e8, gpus=16, tp=2, pp=2, cp=2, grad_accum=4, micro_batch=2, seq_len=256,
               out=tmp_path / "plan"))
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    par = plan["parallelism"]
    assert par["layout"]["dp"] == 2 and par["layout"]["data_group"] == 4
    assert par["bubble"] == pytest.approx(0.2) == bubble_fraction("1F1B", 2, 4)
    assert par["schedules"]["Interleaved1F1B"]["bubble"] == pytest.approx(1 / 9)  # (p−1)/(v·m+p−1), v = 2
    assert [r["role"] for r in par["ranks"]] == ["first", "last"]
    assert par["memory_per_device"] == max(r["total"] for r in par["ranks"])
    assert {t["dimension"] for t in par["communication"]} == {"dp", "tp", "pp", "cp"}
    assert par["context_parallel"]["chunk_tokens"] == 128
    # sequences per step count data-parallel replicas only: 2 per micro-batch x 4 micro-batches x dp 2
    assert plan["compute"]["sequences_per_step"] == 16
    table = capsys.readouterr().out
    for row in ("parallelism (dp 2 x tp 2 x pp 2 x cp 2 = 16 devices)", "pipeline bubble", "every schedule",
                "pp traffic per step", "cp traffic per step", "cp overlap", "memory, pp rank 0 (first)"):
        assert row in table


def test_parallel_flags_parse():
    from jsonargparse import ArgumentParser

    from groundup import config as config_io

    parser = config_io.build_parser(Config)
    ns = parser.parse_args(config_io.normalize_flags(
        ["--model", "llama-2-7b", "--gpus", "64", "--pp", "4", "--cp", "2", "--tp", "8",
         "--pp-schedule", "Interleaved1F1B", "--pp-virtual-stages", "2"]))
    init = ArgumentParser.instantiate_classes(parser, ns)
    cfg = Config(**{k: v for k, v in vars(init).items() if k != "config"})
    assert (cfg.pp, cfg.cp, cfg.tp, cfg.pp_schedule, cfg.pp_virtual_stages) == (4, 2, 8, "Interleaved1F1B", 2)


def test_a_mixture_of_experts_plans_with_its_active_parameters(capsys, tmp_path):
    from groundup.plan.inference import bytes_read_per_step

    cfg = Config(model="mixtral-8x7b", tokens=1e12, gpu="h100", gpus=8)
    model = resolve_model(cfg)
    plan = build_plan(cfg, model, hardware.get_accelerator("h100"))
    count = count_parameters(model)
    assert count.active < count.total
    assert plan["compute"]["flops_6nd"] == pytest.approx(6 * count.active * 1e12)  # 6·N_active·D
    # one token's decode step reads the shared weights and 2 of each layer's 8 experts; 8 tokens read
    # E·(1 - (1 - k/E)^8) = 7.20 of them on average
    shared = count.total - count.routed_experts - count.position_embeddings - count.token_embeddings
    assert bytes_read_per_step(model, precision="bf16", batch=1) == pytest.approx(2 * (shared + count.routed_experts / 4))
    eight = 8 * (1 - 0.75 ** 8) / 8
    assert bytes_read_per_step(model, precision="bf16", batch=8) == pytest.approx(
        2 * (shared + count.routed_experts * eight))
    run(Config(model="mixtral-8x7b", tokens=1e12, gpu="h100", gpus=8, out=tmp_path / "plan"))
    assert "active per token" in capsys.readouterr().out
