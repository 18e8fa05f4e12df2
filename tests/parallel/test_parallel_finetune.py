"""Fine-tuning on 2 gloo processes (CPU), through the `groundup finetune` command line: LoRA SFT under DDP
equals one process with 2x accumulation (losses, held-out losses, adapter files, merged weights), and LoRA
SFT under FSDP2 equals DDP; full-weight SFT tensor parallel, full-weight DPO under DDP and FSDP2, a LoRA
classifier under DDP and continued pretraining under FSDP2 equal one process; checkpoints resume on the
other number of ranks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from parallel_common import torchrun
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parents[1] / "finetune"))

from finetune_helpers import ANIMALS, fruit_items, make_base, write_jsonl  # noqa: E402

from groundup import cli  # noqa: E402
from groundup.finetune import common  # noqa: E402
from groundup.model.lora import LoRAConfig  # noqa: E402
from groundup.parallel.config import ParallelConfig  # noqa: E402


def finetune(argv: list[str]) -> int:
    """`groundup finetune ARGV` in this process."""
    return cli.main(["finetune", *argv])


STEPS = 6
LOOP = ["--device", "cpu", "--batch_size", "4", "--seed", "3", "--optim.lr", "3e-3", "--optim.warmup_steps", "2",
        "--train.max_steps", str(STEPS), "--train.grad_accum", "2", "--train.log_every", "1",
        "--train.eval_every", "3", "--train.checkpoint_every", "3", "--train.keep_checkpoints", "2",
        "--train.progress_bar", "false"]


def sft_args(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["sft", "--model", str(base), "--data", str(data), "--out", str(out), "--val_fraction", "0.15",
            "--lora.enabled", "true", *LOOP, *extra]


def dpo_args(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["dpo", "--model", str(base), "--data", str(data), "--out", str(out), "--val_fraction", "0.15",
            "--beta", "0.5", *LOOP, *extra]


def classify_args(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["classify", "--model", str(base), "--data", str(data), "--out", str(out), "--val_fraction", "0.15",
            "--lora.enabled", "true", *LOOP, *extra]


def continue_args(base: Path, tokens: Path, out: Path, *extra: str) -> list[str]:
    return ["continue", "--model", str(base), "--tokens", str(tokens), "--out", str(out), "--seq_len", "32",
            "--eval_windows", "4", *LOOP, *extra]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def column(run_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in records(run_dir) if key in r and "event" not in r}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.fixture(scope="module")
def runs(spine_tokenizer, spine_tokens, tmp_path_factory) -> dict[str, Path]:
    """In this process (accumulation 2): LoRA SFT (also with activation checkpointing), full-weight SFT and
    DPO, a LoRA classifier, continued pretraining, and the LoRA SFT's step-3 checkpoint of 2 DDP ranks resumed.
    On 2 ranks, in one launch: LoRA SFT under DDP and under FSDP2, full-weight SFT tensor parallel, full-weight
    DPO under DDP and under FSDP2, the LoRA classifier under DDP, continued pretraining under FSDP2, and the
    one-process SFT's step-3 checkpoint resumed on 2 FSDP2 ranks."""
    root = tmp_path_factory.mktemp("parallel-finetune")
    base = make_base(root / "base", spine_tokenizer, "llama")
    items = fruit_items()[:48]
    sft_data = write_jsonl(root / "sft.jsonl", [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in items])
    dpo_data = write_jsonl(root / "dpo.jsonl", [
        {"prompt": q, "chosen": a, "rejected": next(w for w in q.split() if w in ANIMALS)} for q, a in items])
    clf_data = write_jsonl(root / "classify.jsonl", [
        {"text": q, "label": "fruit first" if q.split()[1] == a else "animal first"} for q, a in items])
    out = {name: root / name for name in ("single", "ddp", "fsdp", "one_to_two", "two_to_one", "dpo_ddp",
                                          "dpo_fsdp", "dpo_single", "single_ac", "full", "full_tp", "clf_single", "clf_ddp", "cont_single", "cont_fsdp")}
    out["base"] = base
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert finetune(sft_args(base, sft_data, out["single"])) == 0
        assert finetune(dpo_args(base, dpo_data, out["dpo_single"])) == 0
        assert finetune(sft_args(base, sft_data, out["single_ac"], "--parallel.activation_checkpointing", "full")) == 0
        assert finetune(sft_args(base, sft_data, out["full"], "--lora.enabled", "false")) == 0
        assert finetune(classify_args(base, clf_data, out["clf_single"])) == 0
        assert finetune(continue_args(base, spine_tokens, out["cont_single"])) == 0
        torchrun([
            {"finetune": sft_args(base, sft_data, out["ddp"], "--parallel.data_parallel", "ddp")},
            {"finetune": sft_args(base, sft_data, out["fsdp"], "--parallel.data_parallel", "fsdp")},
            {"finetune": sft_args(base, sft_data, out["one_to_two"], "--parallel.data_parallel", "fsdp",
                                  "--train.resume", str(out["single"] / "checkpoints" / "step-000003"))},
            {"finetune": dpo_args(base, dpo_data, out["dpo_ddp"], "--parallel.data_parallel", "ddp")},
            {"finetune": dpo_args(base, dpo_data, out["dpo_fsdp"], "--parallel.data_parallel", "fsdp")},
            {"finetune": sft_args(base, sft_data, out["full_tp"], "--lora.enabled", "false",
                                  "--parallel.tensor_parallel", "2")},
            {"finetune": classify_args(base, clf_data, out["clf_ddp"], "--parallel.data_parallel", "ddp")},
            {"finetune": continue_args(base, spine_tokens, out["cont_fsdp"], "--parallel.data_parallel", "fsdp")},
        ])
        assert finetune(sft_args(base, sft_data, out["two_to_one"],
                                 "--train.resume", str(out["ddp"] / "checkpoints" / "step-000003"))) == 0
    finally:
        torch.set_num_threads(before)
    return out


def assert_close(a: dict[int, float], b: dict[int, float], steps, tol: float = 1e-5) -> None:
    assert all(step in a and step in b for step in steps), (sorted(a), sorted(b))
    for step in steps:
        assert abs(a[step] - b[step]) <= tol, (step, a[step], b[step])


def test_lora_sft_on_two_ddp_ranks_equals_one_process_with_twice_the_accumulation(runs):
    single, ddp = runs["single"], runs["ddp"]
    assert_close(column(single, "loss"), column(ddp, "loss"), range(1, STEPS + 1))
    assert_close(column(single, "val_loss"), column(ddp, "val_loss"), (3, STEPS))  # evaluation on every rank
    assert column(single, "loss")[STEPS] < column(single, "loss")[1]  # it trained
    # the files of one process: adapters (groundup's and PEFT's), merged weights, result
    for name in ("adapter/adapter.safetensors", "adapter/adapter_model.safetensors", "model.safetensors"):
        assert max_difference(tensors(single / name), tensors(ddp / name)) < 1e-5, name
    adapter = tensors(ddp / "adapter/adapter.safetensors")
    assert any(v.abs().max() > 0 for k, v in adapter.items() if k.endswith("lora_B"))  # trained, not the init
    a, b = (json.loads((d / "adapter/adapter.json").read_text()) for d in (single, ddp))
    assert a == b
    result = json.loads((ddp / "result.json").read_text())
    assert result["steps"] == STEPS and 0 < result["trainable_parameters"] < result["total_parameters"]
    assert result["tokens_seen"] == json.loads((single / "result.json").read_text())["tokens_seen"]
    assert (ddp / "chat_template.jinja").is_file() and (ddp / "data_stats.json").is_file()
    state = json.loads((ddp / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["world_size"] == 2 and state["sampler"]["batches"] == 2 * STEPS  # the global position


def test_lora_sft_under_fsdp2_equals_ddp_and_shards_frozen_and_adapter_weights(runs):
    from torch.distributed.checkpoint import FileSystemReader

    ddp, fsdp = runs["ddp"], runs["fsdp"]
    assert_close(column(ddp, "loss"), column(fsdp, "loss"), range(1, STEPS + 1))
    assert_close(column(ddp, "val_loss"), column(fsdp, "val_loss"), (3, STEPS))
    for name in ("adapter/adapter.safetensors", "model.safetensors"):
        assert max_difference(tensors(ddp / name), tensors(fsdp / name)) < 1e-5, name
    # The checkpoint shows the layout: frozen base weights and adapters both sharded over the 2 ranks,
    # optimizer state for the adapters only.
    meta = FileSystemReader(str(fsdp / "checkpoints" / "step-000006")).read_metadata().state_dict_metadata
    for name in ("model.blocks.0.attn.qkv.weight", "model.blocks.0.attn.qkv.lora_A", "model.blocks.0.mlp.fc.lora_B"):
        assert len(meta[name].chunks) == 2, name
    optim = {k for k in meta if k.startswith("optim.state.")}
    assert optim and all(".lora_A." in k or ".lora_B." in k for k in optim), sorted(optim)[:4]


def test_full_weight_dpo_on_two_ranks_equals_one_process_under_ddp_and_fsdp2(runs):
    single = runs["dpo_single"]
    # the reference log-probabilities, computed once with the batches shared by the ranks, are one process's
    reference = tensors(single / "reference_logps.safetensors")
    assert reference["train_chosen"].numel() > 0 and reference["val_chosen"].numel() > 0
    for name in ("dpo_ddp", "dpo_fsdp"):
        assert max_difference(reference, tensors(runs[name] / "reference_logps.safetensors")) < 1e-5, name
        for key in ("loss", "reward_margin", "preference_accuracy"):
            assert_close(column(single, key), column(runs[name], key), range(1, STEPS + 1))
        assert_close(column(single, "val_loss"), column(runs[name], "val_loss"), (3, STEPS))
        assert max_difference(tensors(single / "model.safetensors"), tensors(runs[name] / "model.safetensors")) < 1e-5
    assert not (runs["dpo_ddp"] / "adapter").exists()


def test_lora_classifier_under_ddp_and_continued_pretraining_under_fsdp2_equal_one_process(runs):
    single, ddp = runs["clf_single"], runs["clf_ddp"]
    for key in ("loss", "accuracy"):  # the logged extras are averaged over the ranks like the loss
        assert_close(column(single, key), column(ddp, key), range(1, STEPS + 1))
    assert_close(column(single, "val_accuracy"), column(ddp, "val_accuracy"), (3, STEPS))
    adapter = tensors(ddp / "adapter/adapter.safetensors")
    assert "lm_head.weight" in adapter and adapter["lm_head.weight"].shape[0] == 2  # the class head, gathered
    for name in ("adapter/adapter.safetensors", "model.safetensors"):
        assert max_difference(tensors(single / name), tensors(ddp / name)) < 1e-5, name
    assert json.loads((ddp / "classifier.json").read_text())["labels"] == ["animal first", "fruit first"]

    single, fsdp = runs["cont_single"], runs["cont_fsdp"]
    assert_close(column(single, "loss"), column(fsdp, "loss"), range(1, STEPS + 1))
    assert_close(column(single, "val_loss"), column(fsdp, "val_loss"), (3, STEPS))
    assert max_difference(tensors(single / "model.safetensors"), tensors(fsdp / "model.safetensors")) < 1e-5


def test_checkpoints_resume_on_the_other_number_of_ranks(runs):
    single = column(runs["single"], "loss")
    assert_close(single, column(runs["two_to_one"], "loss"), range(4, STEPS + 1))  # 2 DDP ranks -> 1 process
    assert_close(single, column(runs["one_to_two"], "loss"), range(4, STEPS + 1))  # 1 process -> 2 FSDP2 ranks
    for name in ("two_to_one", "one_to_two"):
        diff = max_difference(tensors(runs["single"] / "adapter/adapter.safetensors"),
                              tensors(runs[name] / "adapter/adapter.safetensors"))
        assert diff < 1e-5, name


def test_full_weight_sft_tensor_parallel_on_two_ranks_equals_one_process(runs):
    single, tp = runs["full"], runs["full_tp"]
    assert_close(column(single, "loss"), column(tp, "loss"), range(1, STEPS + 1))
    assert_close(column(single, "val_loss"), column(tp, "val_loss"), (3, STEPS))
    # saved in the model file's layout (the fused qkv / gate-up rows put back)
    assert max_difference(tensors(single / "model.safetensors"), tensors(tp / "model.safetensors")) < 1e-5


def test_activation_checkpointing_in_one_process_changes_nothing_but_memory(runs):
    single, ac = runs["single"], runs["single_ac"]
    assert_close(column(single, "loss"), column(ac, "loss"), range(1, STEPS + 1), tol=0.0)
    # the adapter files name the model file's modules, not the checkpoint wrapper's
    assert json.loads((ac / "adapter/adapter.json").read_text()) == json.loads((single / "adapter/adapter.json").read_text())
    for name in ("adapter/adapter.safetensors", "adapter/adapter_model.safetensors", "model.safetensors"):
        assert max_difference(tensors(single / name), tensors(ac / name)) == 0.0, name


def test_tensor_parallel_with_lora_is_refused(tmp_path, runs):
    cfg = common.BaseConfig(model=runs["base"], out=tmp_path / "x", lora=LoRAConfig(enabled=True),
                            parallel=ParallelConfig(tensor_parallel=2))
    with pytest.raises(ValueError, match="LoRA does not compose with parallel.tensor_parallel"):
        common.setup(cfg)
