"""Training's metrics views: TensorBoard event files and the HTML report refreshed while training runs."""

from __future__ import annotations

import json

import pytest

from groundup.model.config import ModelConfig
from groundup.train import pretrain
from groundup.train.logging import LogConfig, ReportRefresher, open_observers, tag_of
from groundup.train.loop import LoopConfig, MetricsLog
from groundup.train.optim import OptimConfig

MODEL = ModelConfig.from_name("tiny-llama", n_layer=1, n_embd=32, n_head=2, n_kv_head=2, vocab_size=320,
                              block_size=32)


def config(tokens, out, log: LogConfig, **train) -> pretrain.Config:
    # batch 16: the final evaluation scores every held-out window, 16 at a time
    loop = {"max_steps": 8, "checkpoint_every": 4, "eval_every": 4, "log_every": 1, "progress_bar": False, **train}
    return pretrain.Config(tokens=tokens, out=out, model=MODEL, optim=OptimConfig(lr=1e-2, warmup_steps=2),
                           train=LoopConfig(**loop), batch_size=16, seq_len=32, eval_windows=2, device="cpu",
                           seed=3, final_eval_stride=32, log=log)


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_gets_every_metric_and_refresh_writes_the_report(spine_tokens, tmp_path):
    pytest.importorskip("tensorboard")
    out = pretrain.run(config(spine_tokens, tmp_path / "model", LogConfig(tensorboard=True, report_every=4)))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = scalars(out / "tensorboard")
    train = [r for r in records if "loss" in r]
    assert [s for s, _ in events["train/loss"]] == [r["step"] for r in train]
    assert [round(v, 4) for _, v in events["train/loss"]] == [round(r["loss"], 4) for r in train]
    assert {"train/lr", "train/grad_norm", "train/tokens_per_s", "val/loss", "val/bits_per_byte"} <= set(events)
    assert len(events["val/loss"]) == len([r for r in records if "val_loss" in r])
    # the refresher drew the report of the model dir in a child process (waited for at the end)
    report = (out / "report.html").read_text()
    assert "loss curves" in report and "<title>groundup run: model</title>" in report


def test_a_resumed_run_drops_the_events_after_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from groundup.train.logging import TensorBoardWriter

    first = TensorBoardWriter(tmp_path, resume_step=None)
    for step in range(1, 9):  # killed after step 8 ...
        first.write({"step": step, "tokens": step * 64, "loss": 10.0 - step})
    first.close()
    second = TensorBoardWriter(tmp_path, resume_step=4)  # ... and resumed from the step-4 checkpoint
    for step in range(5, 9):
        second.write({"step": step, "tokens": step * 64, "loss": 100.0 - step})
    second.close()
    events = scalars(tmp_path)["train/loss"]
    assert [s for s, _ in events] == list(range(1, 9))  # each step once
    assert [v for _, v in events][4:] == [95.0, 94.0, 93.0, 92.0]  # from the resumed run


def test_observers_are_off_by_default_and_failures_never_stop_training(tmp_path, caplog):
    assert open_observers(None, tmp_path, None) == [] and open_observers(LogConfig(), tmp_path, None) == []
    with pytest.raises(ValueError, match="report_every"):
        LogConfig(report_every=-1)

    class Broken:
        def write(self, record):
            raise OSError("disk full")

        def close(self):
            pass

    from groundup.train.logging import _Guarded

    log = MetricsLog(tmp_path / "metrics.jsonl", None, [_Guarded(Broken(), "broken view")])
    log.write({"step": 1, "loss": 1.0})
    log.write({"step": 2, "loss": 0.9})
    log.close()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert sum("broken view failed" in r.message for r in caplog.records) == 1


def test_tags_and_refresh_interval(tmp_path, monkeypatch):
    assert tag_of("loss") == "train/loss" and tag_of("val_loss") == "val/loss"
    assert tag_of("eval/hellaswag/acc") == "eval/hellaswag/acc"
    started = []

    class FakeChild:
        def poll(self):
            return None  # still running

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr("subprocess.Popen", lambda args, **kw: started.append(args) or FakeChild())
    refresher = ReportRefresher(tmp_path, every=10)
    for step in range(1, 31):
        refresher.write({"step": step})
    assert len(started) == 1  # step 10 started one; at 20 and 30 it was still drawing, so those were skipped
    assert started[0][-3:] == ["-m", "groundup.report.run", str(tmp_path)]  # the report stage, not the CLI
