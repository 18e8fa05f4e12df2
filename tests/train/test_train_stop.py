"""A signal stops training with a checkpoint (what a cluster sends before preemption), and the MFU peak
comes from the machine's cached probe."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
import torch
from safetensors.torch import load_file
from test_train_pretrain import config

from groundup.tokens.datasets import RandomWindows
from groundup.train import checkpoint as ckpt
from groundup.train import pretrain
from groundup.train.loop import StopRequest, TrainingStopped
from groundup.train.runtime import peak_flops_for


def quick(tokens, out, **train):
    cfg = config(tokens, out, eval_every=0, **train)
    cfg.final_eval_stride = 32  # a final evaluation of half the windows
    return cfg


def stop_during_step_6(monkeypatch, signum):
    original = RandomWindows.next_batch

    def signalled(self):
        if self.batches == 5:  # during step 6: the step ends, then the run stops
            os.kill(os.getpid(), signum)
        return original(self)

    monkeypatch.setattr(RandomWindows, "next_batch", signalled)
    return original


def test_sigusr1_stops_with_a_checkpoint_and_the_run_resumes_exactly(spine_tokens, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "peak_flops_for", lambda device: None)
    straight = pretrain.run(quick(spine_tokens, tmp_path / "straight"))
    before = signal.getsignal(signal.SIGUSR1)
    original = stop_during_step_6(monkeypatch, signal.SIGUSR1)
    with pytest.raises(TrainingStopped, match=r"SIGUSR1 at step 6: stopped with a checkpoint"):
        pretrain.run(quick(spine_tokens, tmp_path / "stopped"))
    stopped = tmp_path / "stopped"
    assert ckpt.latest_checkpoint(stopped / "checkpoints").name == "step-000006"
    assert not (stopped / "model.safetensors").exists() and not (stopped / "manifest.json").exists()
    records = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert records[-1] == {"step": 6, "event": "stopped", "signal": "SIGUSR1"}
    assert signal.getsignal(signal.SIGUSR1) == before  # the handler given back

    monkeypatch.setattr(RandomWindows, "next_batch", original)
    resumed = pretrain.run(quick(spine_tokens, stopped, resume="auto"))
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[name], b[name]) for name in a)
    losses = [[r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
              for d in (straight, resumed)]
    assert losses[0] == losses[1]


def test_sigterm_stops_a_run_too(spine_tokens, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "peak_flops_for", lambda device: None)
    before = signal.getsignal(signal.SIGTERM)  # not SIG_DFL where an earlier test started Ray in this process
    stop_during_step_6(monkeypatch, signal.SIGTERM)
    with pytest.raises(TrainingStopped, match=r"SIGTERM at step 6"):
        pretrain.run(quick(spine_tokens, tmp_path / "stopped"))
    assert ckpt.latest_checkpoint(tmp_path / "stopped" / "checkpoints").name == "step-000006"
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_second_signal_acts_as_before_and_threads_are_left_alone():
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda *a: calls.append("outer"))
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stop.requested == "SIGUSR1" and calls == []
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler before it is back
            assert calls == ["outer"]
        box = {}
        thread = threading.Thread(target=lambda: box.setdefault("stop", StopRequest().__enter__()))
        thread.start()
        thread.join()
        assert box["stop"].previous == {}  # outside the main thread no handler is installed
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_the_mfu_peak_comes_from_the_cached_probe(probe_cache, monkeypatch):
    from groundup.plan import hardware
    from groundup.probe import cache

    path = cache.cache_path("cpu")
    before = path.read_bytes() if path.exists() else None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"stage": "probe", "created": "then", "matmul": {"fp32": {"flops": 1.25e11}}}))
        monkeypatch.setattr(hardware, "measure_matmul_flops", lambda *a, **k: pytest.fail("timed a matmul"))
        assert peak_flops_for(torch.device("cpu")) == 1.25e11
        assert cache.cached_summary("cpu")["matmul_flops"] == {"fp32": 1.25e11}
        path.unlink()  # no cached probe: a quick matmul, stored for the next start
        monkeypatch.setattr(hardware, "measure_matmul_flops", lambda *a, **k: 7e10)
        assert peak_flops_for(torch.device("cpu")) == 7e10
        stored = json.loads(path.read_text())
        assert stored["stage"] == "probe" and stored["quick"] and stored["matmul"]["fp32"]["flops"] == 7e10
        path.write_text("{not json")  # a broken cache is named and measured around
        assert peak_flops_for(torch.device("cpu")) == 7e10
        # a quick figure is timed again at the next start: a peak is the best rate seen, so the higher stays
        monkeypatch.setattr(hardware, "measure_matmul_flops", lambda *a, **k: 9e10)
        assert peak_flops_for(torch.device("cpu")) == 9e10  # above the cached 7e10 (timed under load): replaced
        assert json.loads(path.read_text())["matmul"]["fp32"]["flops"] == 9e10
        monkeypatch.setattr(hardware, "measure_matmul_flops", lambda *a, **k: 5e10)
        assert peak_flops_for(torch.device("cpu")) == 9e10  # below it (a neighbour's load now): kept
        assert json.loads(path.read_text())["matmul"]["fp32"]["flops"] == 9e10
    finally:
        if before is not None:
            path.write_bytes(before)
        else:
            path.unlink(missing_ok=True)


@pytest.mark.parametrize(("mine", "others", "expected"), [
    ((False, False), [(False, False)] * 3, None),
    ((True, False), [(False, False)] * 3, "max_minutes"),
    ((False, False), [(True, False), (True, False), (False, False)], "max_minutes"),
    ((False, True), [(False, False)] * 3, "signal"),
    ((False, False), [(True, False), (True, True), (True, False)], "signal"),  # every rank out of time, one signalled
])
def test_every_rank_takes_the_same_decision(mine, others, expected):
    import types

    from groundup.train.loop import should_stop

    def flags(out_of_time, signalled, n=4):
        return float(out_of_time) + (n + 1) * float(signalled)

    class Parallel:  # four ranks: this one's flags, and the others' as an all-reduce would add them
        distributed = True
        env = types.SimpleNamespace(world_size=4)

        def mean(self, value):
            return (value + sum(flags(*o) for o in others)) / 4

    stop = StopRequest()
    stop.requested = "SIGTERM" if mine[1] else None
    run = types.SimpleNamespace(budget=10.0, stop=stop, spec=types.SimpleNamespace(parallel=Parallel()))
    state = types.SimpleNamespace(train_seconds=11.0 if mine[0] else 1.0)
    assert should_stop(run, state) == expected


def test_an_mfu_above_one_names_the_stale_peak_once(caplog):
    from types import SimpleNamespace

    from groundup.train.loop import MetricsWindow

    window = MetricsWindow()
    state = SimpleNamespace(step=1, tokens_seen=1000, train_seconds=1.0)
    result = SimpleNamespace(tokens=1000, loss=2.0, loss_sum=2.0, spike=False, extras={}, lr=1e-3, grad_norm=1.0)
    with caplog.at_level("WARNING", logger="groundup.train.loop"):
        for peak in (1e3, 1e3, 1e15):
            window.add(result)
            record = window.record(state, result, flops_per_token=1e6, peak_flops=peak)
    assert record["mfu"] < 1  # a plausible peak: no warning
    warnings = [r.getMessage() for r in caplog.records if "groundup probe" in r.getMessage()]
    assert len(warnings) == 1 and "above 1" in warnings[0]
