"""Pipeline parallelism on gloo (CPU): every schedule offered on 2 and 4 stages, FSDP2 x PP and TP x PP on 2 x 2 meshes,
train step for step like one process (loss and gradient norm within 1e-5); checkpoints resume PP 2 -> 1 and 1 -> 2
and convert to a model dir; value embeddings, document masks and activation checkpointing run through the stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from parallel_common import PP_MODEL, assert_same_losses, losses, make_config, torchrun, weights

from groundup.parallel.apply_pp import SCHEDULES
from groundup.train import pretrain

STEPS = 6
BASE = {"model": PP_MODEL, "batch_size": 4, "grad_accum": 2, "max_steps": STEPS, "checkpoint_every": 3}
"""8 rows a step: 4 micro-batches of 2 rows on 2 stages, 8 of 1 on 4, 4 of 1 per data-parallel rank on 2 x 2."""
FEATURES = {**PP_MODEL, "value_embeddings": True}
MOE = {**PP_MODEL, "moe_experts": 4, "moe_top_k": 2, "moe_balance": "bias", "moe_dense_layers": 5}
"""Dense blocks 0-4, MoE blocks 5-7: on two stages the first holds no MoE layer, yet logs the whole model's loads."""


def metrics(run_dir: Path) -> dict[int, dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r for r in lines if "loss" in r and "event" not in r}


@pytest.fixture(scope="module")
def pp_tokens(spine_tokens, tmp_path_factory) -> Path:
    """The spine's tokens with 2,048 held-out tokens (the final evaluation runs once per run)."""
    out = tmp_path_factory.mktemp("pp_tokens") / "tokens"
    shutil.copytree(spine_tokens, out)
    meta = json.loads((spine_tokens / "meta.json").read_text())
    n, item = 2048, 2 if meta["dtype"] == "uint16" else 4
    (out / "val.bin").write_bytes((spine_tokens / "val.bin").read_bytes()[: n * item])
    meta["bytes"]["val"] = round(meta["bytes"]["val"] * n / meta["tokens"]["val"])
    meta["tokens"]["val"] = n
    (out / "meta.json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="module")
def runs(pp_tokens, tmp_path_factory) -> dict[str, Path]:
    """One process; on 2 ranks every schedule, a resume of the one-process checkpoint, and value embeddings with
    document masks and activation checkpointing; the 2-stage 1F1B checkpoint resumed in one process; on 4 ranks
    every schedule, FSDP2 x PP and TP x PP."""
    root = tmp_path_factory.mktemp("pipeline")
    out: dict[str, Path] = {}

    def run(name: str, **kw) -> dict:
        out[name] = root / name
        return {"tokens": pp_tokens, "out": out[name], **BASE, **kw}

    torch.set_num_threads(1)
    pretrain.run(make_config(**run("single")))
    pretrain.run(make_config(**run("single_features", model=FEATURES, doc_mask=True)))
    pretrain.run(make_config(**run("single_moe", model=MOE)))
    torchrun([*(run(f"pp2_{s}", parallel={"pipeline_parallel": 2, "pipeline_schedule": s}) for s in SCHEDULES),
              run("one_to_two", parallel={"pipeline_parallel": 2}, resume=out["single"] / "checkpoints" / "step-000003"),
              run("pp2_features", model=FEATURES, doc_mask=True,
                  parallel={"pipeline_parallel": 2, "pipeline_schedule": "Interleaved1F1B",
                            "activation_checkpointing": "selective"}),
              run("pp2_moe", model=MOE, parallel={"pipeline_parallel": 2})])
    pretrain.run(make_config(**run("two_to_one", resume=str(out["pp2_1F1B"] / "checkpoints" / "step-000003"))))
    torchrun([*(run(f"pp4_{s}", parallel={"pipeline_parallel": 4, "pipeline_schedule": s}) for s in SCHEDULES),
              run("fsdp_pp", parallel={"pipeline_parallel": 2, "data_parallel": "fsdp"}),
              run("tp_pp", parallel={"pipeline_parallel": 2, "tensor_parallel": 2,
                                     "pipeline_schedule": "Interleaved1F1B"})], nproc=4)
    return out


def assert_like_one_process(runs, name: str, single: str = "single") -> None:
    a, b = metrics(runs[single]), metrics(runs[name])
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    assert_same_losses({s: r["loss"] for s, r in a.items()}, {s: r["loss"] for s, r in b.items()}, a)
    for step in a:  # the gradient norm (what clipping sees) is the whole model's, over every stage
        assert abs(a[step]["grad_norm"] - b[step]["grad_norm"]) <= 1e-5, (step, a[step], b[step])
    wa, wb = weights(runs[single]), weights(runs[name])  # the final model dir gathers every stage
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    ra, rb = (json.loads((runs[n] / "manifest.json").read_text())["result"] for n in (single, name))
    assert abs(ra["held_out_loss"] - rb["held_out_loss"]) < 1e-5  # scored through the stages
    assert ra["tokens_seen"] == rb["tokens_seen"]


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_pipeline_on_two_stages_equals_one_process(runs, schedule):
    assert_like_one_process(runs, f"pp2_{schedule}")
    single = losses(runs["single"])
    assert single[STEPS] < single[1] - 0.1  # it trained


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_pipeline_on_four_stages_equals_one_process(runs, schedule):
    assert_like_one_process(runs, f"pp4_{schedule}")


def test_fsdp2_by_pipeline_on_a_two_by_two_mesh_equals_one_process(runs):
    assert_like_one_process(runs, "fsdp_pp")
    state = json.loads((runs["fsdp_pp"] / "checkpoints" / "step-000003" / "state.json").read_text())
    assert state["world_size"] == 4 and state["optimizer_state"] == "flat"


def test_tensor_parallel_by_pipeline_on_a_two_by_two_mesh_equals_one_process(runs):
    assert_like_one_process(runs, "tp_pp")


def test_value_embeddings_document_masks_and_checkpointed_blocks_run_through_the_stages(runs):
    assert_like_one_process(runs, "pp2_features", single="single_features")


def test_moe_metrics_cover_every_stage(runs):
    assert_like_one_process(runs, "pp2_moe", "single_moe")
    a, b = metrics(runs["single_moe"]), metrics(runs["pp2_moe"])
    for step in a:  # rank 0 holds no MoE layer: its loads are the other stage's, gathered over 'pp'
        keys = {k for k in a[step] if k.startswith("moe_")}
        assert {"moe_load_0", "moe_load_3", "moe_load_max_over_mean", "moe_layer_load_max_over_mean"} <= keys
        assert keys == {k for k in b[step] if k.startswith("moe_")}
        # the loads count every micro-batch (and not the schedule's shape-inference forward at the first step);
        # the aux and z losses are the last micro-batch's, and the two runs cut their micro-batches differently
        loads = keys - {"moe_aux_loss", "moe_z_loss"}
        assert all(abs(a[step][k] - b[step][k]) <= 1e-5 for k in loads), (step, a[step], b[step])


def test_a_pipeline_checkpoint_converts_to_the_model_dir(runs, tmp_path):
    from groundup.train import consolidate

    out = consolidate.run(consolidate.Config(checkpoint=runs["fsdp_pp"], out=tmp_path / "model"))
    a, b = weights(runs["fsdp_pp"]), weights(out)  # the run's final model dir vs its last checkpoint, every stage
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_two_stage_checkpoint_resumes_in_one_process(runs):
    assert_same_losses(losses(runs["single"]), losses(runs["two_to_one"]), range(4, STEPS + 1))
    assert min(losses(runs["two_to_one"])) == 4  # it did resume at step 3


def test_a_one_process_checkpoint_resumes_on_two_stages(runs):
    assert_same_losses(losses(runs["single"]), losses(runs["one_to_two"]), range(4, STEPS + 1))
    assert min(losses(runs["one_to_two"])) == 4
