"""The metrics loader: bounded, min/max-keeping downsampling; bad lines skipped and counted, never fatal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from groundup.report import metrics as metrics_mod
from groundup.report.metrics import compact, load_metrics


def write_lines(path, records, tail: str = "") -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.write(tail)


def test_downsampling_keeps_extremes_and_stays_bounded(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    n = 60_000
    losses = 3 + rng.random(n)
    spike_at, dip_at = int(rng.integers(1000, n - 1000)), int(rng.integers(1000, n - 1000))
    losses[spike_at], losses[dip_at] = 50.0, 0.5
    records = []
    for i in range(n):
        records.append({"step": i + 1, "tokens": (i + 1) * 512, "loss": float(losses[i]), "elapsed_s": i * 0.01})
        if (i + 1) % 1000 == 0:
            records.append({"step": i + 1, "tokens": (i + 1) * 512, "val_loss": 4.0 - i / n})
    path = tmp_path / "metrics.jsonl"
    write_lines(path, records)

    held = []
    add = metrics_mod._Builder.add

    def watching_add(self, block):
        add(self, block)
        held.append(self.held)

    monkeypatch.setattr(metrics_mod._Builder, "add", watching_add)
    m = load_metrics(path, max_points=100, chunk_lines=2_000)
    # memory: no series ever held more than its bound plus one chunk, however long the file
    assert max(held) <= 4 * 100 + 2_000
    loss = m.get("loss")
    assert loss.count == n and len(loss) <= 400
    assert loss.value.max() == 50.0 and loss.value.min() == 0.5
    assert loss.step[np.argmax(loss.value)] == spike_at + 1 and loss.step[np.argmin(loss.value)] == dip_at + 1
    assert loss.step[0] == 1 and loss.step[-1] == n  # the ends survive
    assert np.all(np.diff(loss.index) > 0) and np.all(np.diff(loss.step) > 0)
    assert np.array_equal(loss.tokens, loss.step * 512)  # each point keeps its own x values
    val = m.get("val_loss")
    assert val.count == len(val) == n // 1000  # a short series is kept whole
    assert m.lines == len(records) and m.bad_lines == 0


def test_compact_keeps_every_bucket_min_and_max():
    rng = np.random.default_rng(1)
    n, buckets = 10_000, 50
    data = np.vstack([np.arange(n), np.arange(n), np.zeros(n), np.zeros(n), rng.normal(size=n)])
    kept = compact(data, buckets)
    assert kept.shape[1] <= 4 * buckets
    width = n / buckets
    for b in range(buckets):
        lo, hi = int(np.ceil(b * width)), int(np.ceil((b + 1) * width))
        chunk = data[4, lo:hi]
        assert chunk.max() in kept[4] and chunk.min() in kept[4]
    assert compact(data[:, :100], buckets).shape[1] == 100  # small inputs pass through


def test_truncated_last_line_is_skipped_and_counted(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": s, "tokens": s * 10, "loss": 5.0 - s / 10} for s in range(1, 21)]
    write_lines(path, records, tail='{"step": 21, "tokens": 210, "lo')  # killed mid-write
    m = load_metrics(path)
    assert m.lines == 20 and m.bad_lines == 1
    assert m.get("loss").count == 20 and m.get("loss").step[-1] == 20
    assert "metrics.jsonl:21" in m.bad_examples[0]


def test_malformed_lines_events_and_non_finite_values(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        json.dumps({"step": 1, "loss": 4.0, "lr": 1e-3}),
        "this is not json",
        json.dumps([1, 2, 3]),
        '{"step": 2, "loss": [1,',  # two broken halves that would join into one valid object
        '2]}',
        "",
        json.dumps({"step": 3, "event": "skipped_non_finite", "loss": float("inf"), "grad_norm": float("nan")}),
        json.dumps({"step": 4, "loss": float("nan"), "lr": 1e-3, "note": "text is ignored", "ok": True}),
        json.dumps({"loss": 3.0}),  # no step: drawn at its position in the series
    ]
    path.write_text("\n".join(lines) + "\n")
    m = load_metrics(path)
    assert m.bad_lines == 4 and m.lines == 4
    assert m.events == {"skipped_non_finite": 1}
    assert m.non_finite == 1  # the NaN loss of step 4
    loss = m.get("loss")
    assert loss.value.tolist() == [4.0, 3.0] and loss.step.tolist() == [1.0, 1.0]
    assert "note" not in m and "ok" not in m and m.get("lr").count == 2
    assert [e.split(":")[1] for e in m.bad_examples] == ["2", "3", "4", "5"]


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "metrics.jsonl"
    empty.write_text("")
    m = load_metrics(empty)
    assert m.lines == 0 and not m.series
    with pytest.raises(FileNotFoundError):
        load_metrics(tmp_path / "absent.jsonl")


def test_lists_in_records_are_not_curves(tmp_path):
    # telemetry.jsonl carries lists (a GPU's throttle reasons, warnings): left out, the numbers beside them kept
    path = tmp_path / "telemetry.jsonl"
    rows = [{"step": 1, "gpu0/temperature_c": 60.0, "gpu0/throttle_reasons": []},
            {"step": 2, "gpu0/temperature_c": 61.0, "gpu0/throttle_reasons": []},
            {"step": 3, "gpu0/temperature_c": 85.0, "gpu0/throttle_reasons": ["sw_thermal_slowdown", "gpu_idle"],
             "warnings": ["GPU 0 at 85 °C"]},
            {"step": 4, "gpu0/temperature_c": 70.0, "gpu0/throttle_reasons": [[1], [2, 3]]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = load_metrics(path)
    assert list(metrics.get("gpu0/temperature_c").value) == [60.0, 61.0, 85.0, 70.0]
    assert "gpu0/throttle_reasons" not in metrics and "warnings" not in metrics


def test_the_expert_load_figure_draws_a_mixture_of_experts_run_only(tmp_path):
    from groundup.report import plots

    rows = []
    for step in range(1, 31):
        shares = np.array([4.0 - 2.5 * min(step, 20) / 20, 1, 1, 1])  # expert 0 overloaded, then balanced
        shares /= shares.sum()
        rows.append({"step": step, "loss": 5.0, "moe_load_max_over_mean": float(shares.max() * 4),
                     "moe_layer_load_max_over_mean": float(shares.max() * 4) + 0.1,
                     **{f"moe_load_{e}": float(v) for e, v in enumerate(shares)}})
    write_lines(tmp_path / "moe.jsonl", rows)
    write_lines(tmp_path / "dense.jsonl", [{"step": s, "loss": 5.0} for s in range(1, 31)])
    moe, dense = load_metrics(tmp_path / "moe.jsonl"), load_metrics(tmp_path / "dense.jsonl")
    assert plots.expert_keys(moe) == ["moe_load_0", "moe_load_1", "moe_load_2", "moe_load_3"]
    png = plots.expert_load_figure([("moe", moe), ("dense", dense)])
    assert png is not None and png.startswith(b"\x89PNG")
    assert plots.expert_load_figure([("dense", dense)]) is None
