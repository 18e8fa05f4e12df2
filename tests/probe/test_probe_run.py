"""`groundup probe`: probe.json's figures, the cache, plans from it, and the disk read."""

from __future__ import annotations

import json

import pytest

from groundup import cli
from groundup.probe import cache
from groundup.probe import run as probe_stage

SMALL = ["--quick", "--matmul_size", "128", "--matmul_seconds", "0", "--array_bytes", str(2**20),
         "--read_bytes", str(2**20)]


def test_a_quick_probe_writes_probe_json_and_the_cache(tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert cli.main(["probe", "--out", str(out), *SMALL]) == 0
    probe = json.loads(out.read_text())
    assert probe["stage"] == "probe" and probe["quick"] and probe["device"]["type"] == "cpu"
    for dtype in ("fp32", "bf16", "fp16"):
        assert probe["matmul"][dtype]["flops"] > 0 and probe["matmul"][dtype]["size"] == 128
    assert "CUDA" in probe["matmul"]["tf32"]["skipped"] and "CUDA" in probe["matmul"]["fp8"]["skipped"]
    assert probe["memory_bandwidth"]["kind"] == "triad" and probe["memory_bandwidth"]["bytes_per_s"] > 0
    assert probe["host_device_copy"] is None and probe["topology"] is None
    read = probe["shard_read"]
    assert read["scratch"] and read["bytes"] == 2**20 and read["bytes_per_s"] > 0
    assert probe["collectives"] is None  # a quick probe sweeps only when asked for ranks
    assert not list(tmp_path.glob(".groundup-probe-read-*"))  # the scratch file is gone
    printed = capsys.readouterr().out
    assert "matmul fp32" in printed and "triad" in printed
    cached = cache.load_cached("cpu")
    assert cached is not None and cached["matmul"]["fp32"]["flops"] == probe["matmul"]["fp32"]["flops"]
    # `groundup plan --hardware` plans with the measured figures
    assert cli.main(["plan", "--model", "tiny-gpt2", "--tokens", "1e6", "--hardware", str(out), "--precision", "fp32",
                     "--out", str(tmp_path / "plan")]) == 0
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert plan["hardware"]["measured"] and plan["hardware"]["peak_used"] == probe["matmul"]["fp32"]["flops"]
    assert plan["hardware"]["bandwidth"] == probe["memory_bandwidth"]["bytes_per_s"]
    # a second probe replaces the first; a file that is not a probe is never replaced
    assert cli.main(["probe", "--out", str(out), *SMALL, "--dtypes", '["fp32"]', "--cache", "false"]) == 0
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not an earlier probe"):
        cli.main(["probe", "--out", str(tmp_path / "notes.json"), *SMALL])


def test_reading_a_token_shard(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "train.bin").write_bytes(bytes(3 * 2**20))
    read = probe_stage.measure_read(probe_stage.shard_file(tokens), 2**21)
    assert read["bytes"] == 2**21 and read["path"].endswith("train.bin") and read["bytes_per_s"] > 0
    assert probe_stage.measure_read(tokens / "train.bin", 2**30)["bytes"] == 3 * 2**20  # the file is smaller
    with pytest.raises(FileNotFoundError, match="no such file"):
        probe_stage.shard_file(tmp_path / "nowhere")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        probe_stage.measure_read(tmp_path / "empty.bin", 1024)


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown matmul dtype 'fp4'"):
        probe_stage.run(probe_stage.Config(out=tmp_path / "p.json", quick=True, dtypes=["fp4"]))
    with pytest.raises(ValueError, match="unknown collective 'gossip'"):
        probe_stage.run(probe_stage.Config(out=tmp_path / "p.json", quick=True, collectives=["gossip"]))


def test_a_slow_format_is_timed_on_a_smaller_product(monkeypatch):
    from groundup.plan import hardware

    monkeypatch.setattr(hardware, "best_seconds", lambda *a, **k: 0.5)  # a 512x512 product taking 0.5 s
    assert probe_stage.fit_matmul_size(2048, "bf16", "cpu") == 512  # 4 s at 1024, over the 2 s budget
    assert probe_stage.fit_matmul_size(256, "bf16", "cpu") == 256
    monkeypatch.setattr(hardware, "best_seconds", lambda *a, **k: 0.1)  # 0.8 s at 1024: within 2 s, not 0.3 s
    assert probe_stage.fit_matmul_size(2048, "bf16", "cpu") == 1024
    assert probe_stage.fit_matmul_size(2048, "bf16", "cpu", budget_seconds=0.3) == 512


def test_under_torchrun_the_sweep_is_over_torchruns_ranks(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src"
    out = tmp_path / "probe.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "groundup.cli", "probe", "--out", str(out), *SMALL, "--dtypes", '["fp32"]',
                           "--max_bytes", "8192", "--collectives", '["all_reduce", "all_to_all"]', "--cache", "false"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(out.read_text())  # written once, by rank 0
    sweep = probe["collectives"]
    assert sweep["ranks"] == 2 and sweep["backend"] == "gloo"
    assert [(r["collective"], r["bytes"]) for r in sweep["results"]] == [
        (name, size) for name in ("all_reduce", "all_to_all") for size in (1024, 2048, 4096, 8192)]
    assert probe["matmul"]["fp32"]["flops"] > 0
