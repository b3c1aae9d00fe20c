"""The benchmarks' bookkeeping and a run of each on the tiny-random backbone."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from llm_fixtures import tiny_model_fixture  # noqa: F401  (a pytest fixture)

from cprec_recbole.evaluation import INVALID, UNRANKED
from cprec_recbole.llm.inference import EvalOutput
from cprec_recbole.quick_start import run

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


def test_benchmark_times_generate_and_both_scores_on_the_same_users(bench, tiny_base, tmp_path):
    settings = {**tiny_base, "llm_backbone": "tiny-random", "score_rule": "distinct_prefix"}
    argv = [f"--{k}={v}" for k, v in settings.items()] + [
        "--model=LLaMA2ZeroShot",
        "--dataset=Tiny",
        "--users=6",
        "--sweep=1",
        "--matmul_repeats=2",
        f"--results_dir={tmp_path / 'results'}",
    ]
    out = bench.main(argv)
    assert out["users"] == 6
    assert 1 <= out["generate"]["prompts_per_user"] <= out["rounds"]
    # Its score numbers are the pipeline's (score inference) for the same users and rule.
    piped = run("LLaMA2ZeroShot", "Tiny", overrides={**settings, "eval_users": 6})["test"]
    assert piped["users"] == 6
    assert {k: out["score"][k] for k in ("hr@1", "hr@5", "valid_ratio")} == {
        k: piped[k] for k in ("hr@1", "hr@5", "valid_ratio")
    }
    assert out["score_mean_whole_answers"]["score_rule"] == "mean"
    # the sweep scores the same users at every other batch size, against the session-16 default
    sweep = [out[f"score_batch_{b}"] for b in bench.SWEEP if b != out["eval_batch_users"]]
    assert [row["eval_batch_users"] for row in sweep] == [1, 8, 16]
    assert all(row["fraction_of_matmul_rate"] > 0 for row in (out["score"], *sweep))
    assert out["ratio_over_reference"] > 0 and out["score"]["rank_changes_vs_score"] == 0
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


def test_counted_forward_flops_are_torchs_own_count(tiny_model):
    """The hooks count what torch's FLOP counter counts for the same calls (the decoder's linear
    maps and the LM head at the kept positions; it does not count the CPU's fused attention
    kernel), plus attention over each call's whole square."""
    from torch.utils.flop_counter import FlopCounterMode

    rates = load_script("rates")
    ids = torch.randint(0, tiny_model.config.vocab_size, (3, 11))
    counter = rates.counting_forwards(tiny_model)
    with torch.no_grad(), counter as count, FlopCounterMode(display=False) as reference:
        tiny_model(input_ids=ids, logits_to_keep=2)
        tiny_model(input_ids=ids[:, :5])
    assert count.calls == 2 and count.tokens == 3 * 11 + 3 * 5
    assert count.matmul == reference.get_total_flops()
    dims = rates.model_dims(tiny_model)
    assert count.attention == 4 * dims.layers * dims.query * 3 * (11 * 11 + 5 * 5)


# --------------------------------------------------------------------------- CPT throughput
@pytest.fixture(scope="module")
def cpt_bench():
    return load_script("cpt_throughput")


def test_padding_counts_each_micro_batch_up_to_its_longest_row(cpt_bench):
    lengths = np.array([10, 4, 6, 6, 3])
    out = cpt_bench.padding([[0, 1], [2, 3, 4]], lengths)
    assert out == {"real_tokens": 29, "padded_tokens": 2 * 10 + 3 * 6, "padding_fraction": 0.2368}


def test_random_micro_batches_cover_every_sample_once_in_a_seeded_order(cpt_bench):
    micros = cpt_bench.random_micro_batches(np.arange(10, 20), micro=4, seed=3)
    assert [len(m) for m in micros] == [4, 4, 2]
    assert sorted(i for m in micros for i in m) == list(range(10, 20))
    assert micros == cpt_bench.random_micro_batches(np.arange(10, 20), micro=4, seed=3)


def test_train_flops_counts_padding_as_executed_but_not_as_useful(cpt_bench):
    dims = cpt_bench.Dims(frozen=100, lora=10, layers=2, query=4, hidden=3, vocab=5)
    executed, useful = cpt_bench.train_flops([3, 1], width=3, kept=2, dims=dims)
    head = 4 * 3 * 5 * 2 * 2
    assert executed == 460 * 6 + 96 * 2 * 9 + head
    assert useful == 460 * 4 + 48 * (9 + 1) + head
    assert (
        cpt_bench.train_flops([3, 3], 3, 2, dims)[1] < cpt_bench.train_flops([3, 3], 3, 2, dims)[0]
    )


def test_cpt_throughput_benchmark_runs_both_modes_and_variants_on_tiny_random(cpt_bench, tmp_path):
    from tests.test_cpt import write_cpt_domains

    data = write_cpt_domains(tmp_path / "data")
    argv = [
        "--model=CPRec",
        "--dataset=Tiny",
        f"--data_path={data}",
        f"--output_dir={tmp_path / 'saved'}",
        "--llm_backbone=tiny-random",
        "--cpt_micro_batch_size=4",
        "--samples=12",
        "--variants=1",
        "--profile=1",
        "--matmul_repeats=2",
        "--rec_model_overrides={epochs: 1, hidden_size: 16, inner_size: 32, n_layers: 1}",
        f"--results_dir={tmp_path / 'results'}",
    ]
    out = cpt_bench.main(argv)
    naive, shipped = out["naive"], out["shipped"]
    assert naive["real_tokens"] == shipped["real_tokens"] > 0  # the same samples in both modes
    assert shipped["padded_tokens"] <= naive["padded_tokens"]
    assert out["ratio_shipped_over_naive_real_tokens_per_s"] > 0
    assert out["eager"]["real_tokens"] == naive["real_tokens"]
    assert out["ratio_shipped_over_eager_real_tokens_per_s"] > 0 and out["machine"]["cpu"]
    # tiny-random is fp32: its eager loss is the fp32 reference's (the check bf16 runs are held to)
    assert out["eager"]["first_loss"] == pytest.approx(out["first_loss_fp32"], rel=1e-4)
    assert len(out["profile"]["top_ops"]) == 10
    assert [v["micro_batch_size"] for v in out["variants"]] == [4, 4, 4, 4, 8, 8, 4]
    assert out["variants"][-1]["real_tokens"] == naive["real_tokens"]
    assert out["ratio_shipped_over_naive_at_llara_dropout"] > 0
    assert set(out["plan_padding"]["by_micro_batch_size"]) == {"4", "8", "16"}
    sft = out["sft"]  # LLaRA's SFT step on Tiny's windows, hybrid prompts, the same 12 samples
    assert sft["naive"]["real_tokens"] == sft["shipped"]["real_tokens"] > 0
    assert sft["naive"]["first_loss"] == pytest.approx(sft["shipped"]["first_loss"], rel=1e-4)
    assert out["fraction_of_matmul_rate"]["sft_shipped_executed"] > 0
    written = json.loads((tmp_path / "results" / "cpt-throughput-tiny-random.json").read_text())
    assert written == out


# --------------------------------------------------------------------------- GPU smoke
@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message of a machine without CUDA"
)
def test_gpu_smoke_says_in_one_line_that_there_is_no_cuda_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script("gpu_smoke").main(["--dataset=Tiny"])
    assert exit_.value.code == 2
    message = capsys.readouterr().err
    assert (
        message.count("\n") == 1 and "sees no CUDA device" in message and "--device=cpu" in message
    )


def test_gpu_smoke_runs_llara_and_cprec_on_the_cpu_in_the_gpu_profile(tmp_path):
    from tests.test_cpt import write_cpt_domains

    data = write_cpt_domains(tmp_path / "data")
    argv = [
        "--dataset=Tiny",
        f"--data_path={data}",
        "--device=cpu",
        "--llm_backbone=tiny-random",
        "--samples=8",
        "--users=4",
        "--matmul_size=64",
        "--matmul_repeats=2",
        "--rec_model_overrides={epochs: 1, hidden_size: 16, inner_size: 32, n_layers: 1}",
        *("--micro_batch_size=4", "--train_batch_size=4", "--cpt_micro_batch_size=4"),
        f"--results_dir={tmp_path / 'results'}",
    ]
    out = load_script("gpu_smoke").main(argv)
    assert out["dtype"] == "bf16" and out["backbone"] == "tiny-random"  # the gpu profile's dtype
    llara, cprec = out["models"]["LLaRA"], out["models"]["CPRec"]
    assert "cpt" not in llara and cprec["cpt"]["tokens"] > 0
    for row in (llara["sft"], cprec["sft"], cprec["cpt"]):
        assert row["tokens_per_s"] > 0 and 0 < row["matmul_fraction"]
    assert llara["sft"]["tokens"] == cprec["sft"]["tokens"]  # the same SFT samples
    assert llara["test"]["users"] == 4 and llara["peak_process_memory_mib"] > 0
    written = json.loads((tmp_path / "results" / "gpu-smoke-tiny-random.json").read_text())
    assert written == out
