"""benchmarks/rl_arith.py's data (worked sums, an honest held-out set) and grpo_trl.py's reward (groundup's)."""

from __future__ import annotations

import json

import pytest

from groundup.evaluate.answers import final_answer
from groundup.evaluate.generation import Limits
from groundup.finetune.rewards import RewardCounts, Rewards


@pytest.fixture(scope="module")
def bench(import_benchmark):
    return import_benchmark("rl_arith"), import_benchmark("grpo_trl")  # grpo_trl imports trl only when it trains


def test_worked_solution_ends_in_the_sum_and_carries(bench):
    rl_arith, _ = bench
    assert rl_arith.solution(37, 48, True) == "7+8=15, 3+4+1=8 #### 85"
    assert rl_arith.solution(99, 7, True) == "9+7=16, 9+0+1=10 #### 106"
    assert rl_arith.solution(5, 3, False) == "#### 8"
    for a, b in [(0, 0), (9, 91), (50, 50), (12, 345)]:
        assert final_answer(rl_arith.solution(a, b, True)) == str(a + b)


def test_held_out_problems_are_not_trained_on(bench, tmp_path):
    rl_arith, _ = bench
    args = rl_arith.parser().parse_args(["--sft-examples", "300", "--rl-prompts", "200", "--held-out", "50"])
    paths = rl_arith.write_data(tmp_path, args)
    held = {json.loads(x)["prompt"] for x in paths["held_out"].read_text().splitlines()}
    rl = {json.loads(x)["prompt"] for x in paths["rl"].read_text().splitlines()}
    sft = {json.loads(x)["messages"][0]["content"] for x in paths["sft"].read_text().splitlines()}
    assert held and not held & rl and not held & sft


def test_trl_reward_is_groundups_numeric_reward(bench):
    _, grpo_trl = bench
    texts = ["7+8=15, 3+4+1=8 #### 85", "#### 84", "the sum is 85.", "#### 1,085", ""]
    answers = ["85", "85", "85", "1085", "0"]
    ours, _ = Rewards(names=["numeric"], weights=[1.0], format_regex="", timeout_s=1.0,
                      test_limits=Limits()).score(texts, [{"answer": a} for a in answers], RewardCounts())
    conversational = [[{"role": "assistant", "content": t}] for t in texts]
    assert grpo_trl.numeric_reward(conversational, answers) == ours == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert grpo_trl.numeric_reward(texts, answers) == ours
