"""The benchmarks' bookkeeping and a run of each on the tiny-random backbone."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from cprec_recbole.evaluation import INVALID, UNRANKED
from cprec_recbole.llm.inference import EvalOutput

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def load_script(name: str):
    if str(BENCHMARKS) not in sys.path:  # as when run as a script: its folder comes first
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_script("inference")


def test_model_calls_count_picks_and_the_invalid_answer_that_ended_a_user(bench):
    picks = [[], ["a", "b", "c"], ["a", "b", "c", "d", "e"], ["a", "b"]]
    ranks = np.array([INVALID, 2, UNRANKED, UNRANKED])  # last: round 2 answered invalidly
    out = EvalOutput(ranks, np.array([False, True, True, True]), [""] * 4, picks)
    assert bench.model_calls(out, rounds=5) == 1 + 3 + 5 + 3


def test_benchmark_times_generate_and_both_scores_on_the_same_users(
    bench, tiny_overrides, tmp_path
):
    argv = [f"--{k}={v}" for k, v in tiny_overrides.items()] + [
        "--model=LLaMA2ZeroShot",
        "--dataset=Tiny",
        "--llm_backbone=tiny-random",
        "--users=6",
        "--score_rule=distinct_prefix",
        f"--results_dir={tmp_path / 'results'}",
    ]
    out = bench.main(argv)
    assert out["users"] == 6
    assert 1 <= out["generate"]["prompts_per_user"] <= out["rounds"]
    assert out["score"]["valid_ratio"] == out["score_mean_whole_answers"]["valid_ratio"] == 1.0
    assert out["score_mean_whole_answers"]["score_rule"] == "mean"
    assert out["ratio_generate_over_score"] == pytest.approx(
        out["generate"]["seconds"] / out["score"]["seconds"], rel=0.01
    )
    written = json.loads(
        (tmp_path / "results" / "inference-LLaMA2ZeroShot-tiny-random.json").read_text()
    )
    assert written == out


def test_sft_step_benchmark_times_both_losses_on_the_same_batches(tiny_overrides, tmp_path):
    argv = [f"--{k}={v}" for k, v in tiny_overrides.items()] + [
        "--model=LLaRA",
        "--dataset=Tiny",
        "--llm_backbone=tiny-random",
        "--batches=2",
        f"--results_dir={tmp_path}",
    ]
    out = load_script("sft_step").main(argv)  # raises if the two losses disagree
    assert out["micro_batches"] == 2
    assert out["naive_s_per_sample"] > 0 and out["shipped_s_per_sample"] > 0
    assert json.loads((tmp_path / "sft-step-LLaRA-tiny-random.json").read_text()) == out
