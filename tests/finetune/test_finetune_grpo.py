"""GRPO: advantages and loss against hand computations, rewards that fail, bad input, a tiny run and its resume."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from finetune_helpers import interrupted_then_resumed, loop, write_jsonl

from groundup.finetune import grpo
from groundup.finetune.data import DataError, DataStats
from groundup.finetune.rewards import RewardCounts, Rewards
from groundup.infer.sampling import SamplingParams
from groundup.train.optim import OptimConfig


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()  # unbiased, as TRL
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5]]) / (std + 1e-4)
    adv = grpo.group_advantages(rewards)
    assert torch.allclose(adv[0], expected[0]) and torch.equal(adv[1], torch.zeros(4))
    assert torch.equal(grpo.group_advantages(rewards, "none")[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_loss_is_policy_gradient_at_ratio_one_and_clips_and_penalises_kl():
    logps = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    adv = torch.tensor([1.0, -2.0])
    loss, m = grpo.grpo_loss(logps, logps.detach(), None, adv, mask, epsilon_low=0.2, epsilon_high=0.2, beta=0.0)
    loss.backward()
    # token-level: -(sum of A per token) / tokens; the gradient of each token's logp is -A / tokens
    assert float(loss) == pytest.approx(-(1 + 1 - 2) / 3)
    assert torch.allclose(logps.grad, torch.tensor([[-1 / 3, -1 / 3, 0.0], [2 / 3, 0.0, 0.0]]))
    assert m["clip_ratio"] == 0.0 and "kl" not in m
    seq, _ = grpo.grpo_loss(logps.detach(), logps.detach(), None, adv, mask, epsilon_low=0.2, epsilon_high=0.2,
                            beta=0.0, loss_type="sequence")
    assert float(seq) == pytest.approx(-(1 - 2) / 2)  # per completion, then the mean
    # a ratio of 2 with a positive advantage is clipped at 1.2: no gradient, counted
    new = torch.log(torch.tensor([[2.0]])).requires_grad_(True)
    loss, m = grpo.grpo_loss(new, torch.zeros(1, 1), None, torch.tensor([1.0]), torch.ones(1, 1, dtype=torch.bool),
                             epsilon_low=0.2, epsilon_high=0.2, beta=0.0)
    loss.backward()
    assert float(loss) == pytest.approx(-1.2) and float(new.grad) == 0.0 and m["clip_ratio"] == 1.0
    # k3: exp(ref - logp) - (ref - logp) - 1, zero at ref == logp
    ref = torch.tensor([[-1.5]])
    _, m = grpo.grpo_loss(torch.tensor([[-1.0]]), torch.tensor([[-1.0]]), ref, torch.tensor([0.0]),
                          torch.ones(1, 1, dtype=torch.bool), epsilon_low=0.2, epsilon_high=0.2, beta=0.1)
    assert m["kl"] == pytest.approx(float(torch.exp(torch.tensor(-0.5)) + 0.5 - 1))


def test_group_size_one_and_prompts_without_answers_are_refused(tmp_path, spine_tokenizer):
    from groundup.tokenizer import Tokenizer
    from groundup.tokenizer.chat import DEFAULT_CHAT_TEMPLATE

    with pytest.raises(ValueError, match="group_size must be at least 2"):
        grpo.Config(group_size=1)
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+2?"}])
    tok = Tokenizer.from_file(spine_tokenizer)
    with pytest.raises(DataError, match=r"p\.jsonl:2: missing 'answer'"):
        grpo.load_prompts(path, tok, DEFAULT_CHAT_TEMPLATE, {"answer"}, 64, DataStats(), False)
    stats = DataStats()
    assert len(grpo.load_prompts(path, tok, DEFAULT_CHAT_TEMPLATE, {"answer"}, 64, stats, True)) == 1
    assert stats.skipped == 1


def test_rewards_that_raise_or_hang_are_counted_and_the_rest_scored(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "import time\n"
        "def flaky(completion, record):\n"
        "    if 'boom' in completion: raise RuntimeError('boom')\n"
        "    if 'hang' in completion: time.sleep(30)\n"
        "    if 'nan' in completion: return float('nan')\n"
        "    return len(completion) / 10\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    rewards = Rewards(names=["numeric", "my_rewards:flaky", "format"], weights=[1.0, 1.0, 0.5],
                      format_regex=r"#### \d+$", timeout_s=0.2, test_limits=grpo.Limits())
    counts = RewardCounts()
    texts = ["so #### 4", "boom", "hang", "nan", "\\boxed{4}"]
    totals, passed = rewards.score(texts, [{"answer": "4"}] * 5, counts)
    assert totals == pytest.approx([1 + 0.9 + 0.5, 0.0, 0.0, 0.0, 1 + 0.9])
    assert passed == [True, False, False, False, True]
    assert counts.errors == 2 and counts.timeouts == 1 and "RuntimeError: boom" in counts.samples[0]
    with pytest.raises(ValueError, match="cannot import"):
        Rewards(names=["no_such_module_xyz:f"], weights=[1.0], format_regex="", timeout_s=1, test_limits=grpo.Limits())


def test_python_tests_reward_runs_in_the_sandbox():
    rewards = Rewards(names=["tests"], weights=[1.0], format_regex="", timeout_s=1.0,
                      test_limits=grpo.Limits(timeout_s=2.0))
    record = {"tests": "assert add(2, 3) == 5", "entry_point": ""}
    good = "```python\ndef add(a, b):\n    return a + b\n```"
    counts = RewardCounts()
    totals, _ = rewards.score([good, "def add(a, b):\n    return a - b", "while True: pass"], [record] * 3, counts)
    assert totals == [1.0, 0.0, 0.0] and counts.timeouts == 1


def prompts(n: int, offset: int = 0) -> list[dict]:
    return [{"prompt": f"{i} plus 1", "answer": str(i + 1)} for i in range(offset, offset + n)]


def config(base, data, val, out, resume=None, **kw):
    settings = dict(model=base, data=data, val_data=val, out=out, batch_size=2, group_size=3, device="cpu",
                    sampling=SamplingParams(temperature=1.0, max_new_tokens=6), rewards=["numeric", "format"],
                    format_regex="[0-9]", optim=OptimConfig(lr=3e-3, warmup_steps=1, weight_decay=0.0),
                    train=loop(resume=resume), log_samples_every=1, max_val_prompts=4)
    return grpo.Config(**{**settings, **kw})


def test_grpo_logs_rollout_metrics_samples_and_held_out_pass_rate(base_gpt2, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", prompts(12))
    val = write_jsonl(tmp_path / "val.jsonl", prompts(4, offset=50))
    # two inner iterations with a KL term: odd steps reuse the rollouts of the step before
    out = grpo.run(config(base_gpt2, train, val, tmp_path / "out", num_iterations=2, beta=0.05))
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert len(logged) == 6
    assert {"reward_mean", "reward_std", "pass_rate", "kl", "clip_ratio", "completion_length",
            "zero_std_groups", "reward_errors", "reward_timeouts"} <= logged[0].keys()
    assert logged[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is the reference before any update
    assert any(r["kl"] > 0 for r in logged[1:])
    assert [r["reward_mean"] for r in logged][::2] == [r["reward_mean"] for r in logged][1::2]  # reused rollouts
    assert any("val_pass_rate" in r for r in records)
    samples = [json.loads(x) for x in (out / grpo.SAMPLES_FILE).read_text().splitlines()]
    assert len(samples) == 3 and len(samples[0]["completions"]) == 3 and len(samples[0]["rewards"]) == 3
    assert (out / "chat_template.jinja").is_file()


def test_grpo_resumes_exactly(base_gpt2, tmp_path, monkeypatch):
    from finetune_helpers import assert_same_weights

    train = write_jsonl(tmp_path / "train.jsonl", prompts(12))
    straight, resumed = interrupted_then_resumed(
        grpo.run, lambda out, resume: config(base_gpt2, train, None, out, resume, val_fraction=0.0),
        tmp_path, monkeypatch, grpo.RolloutSampler)
    assert_same_weights(straight, resumed)


def test_grpo_with_lora_writes_adapters(base_llama, tmp_path):
    from groundup.model.lora import LoRAConfig

    train = write_jsonl(tmp_path / "train.jsonl", prompts(6))
    out = grpo.run(config(base_llama, train, None, tmp_path / "out", val_fraction=0.0,
                          lora=LoRAConfig(enabled=True, rank=4), train=loop(max_steps=2, checkpoint_every=0)))
    assert (out / "adapter" / "adapter.safetensors").is_file() and (out / "model.safetensors").is_file()
