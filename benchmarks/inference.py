"""Wall time of `generate` (iterative, 5 rounds for HR@5) vs `score` on the same model and users,
and how close scoring comes to the CPU's matmul rate.

    python benchmarks/inference.py --model=LLaRA --dataset=Game --data_path=../shared/data \
        --llm_backbone=smollm2-135m --users=50 --sweep=1

The model's cached stages are reused (a fine-tuned LLaRA answers validly, so generation really
runs its 5 rounds; a zero-shot model that answers invalidly stops after one). Prints both times,
users/s and the ratio generate/score (when the configured score rule is another, also the time of
the mean log-likelihood of whole answers), after one warm-up user per mode. Every score row also
gives the forward FLOPs it executed per second (``rates.counting_forwards``) as a fraction of the
bf16/fp32 matmul rate measured at the decoder's weight shapes in the same run. ``--sweep=1`` adds
score rows at other ``eval_batch_users`` (users per forward call), each with the number of users
whose rank differs from the configured batch size's (bf16 rounding depends on the batch's padding,
so only ties may move), and the ratio of the configured batch size over ``REFERENCE`` (the
session-16 default). ``--generate=0`` skips generation. Writes
benchmarks/results/inference-<model>-<backbone>.json (``--results_dir`` moves it). Any other
--key=value is a config override, as in the CLI.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

import torch

from cprec_recbole.evaluation import INVALID, UNRANKED
from cprec_recbole.io import write_json
from cprec_recbole.llm.inference import EvalOutput, output_metrics
from cprec_recbole.stages import machine

from harness import setup
from rates import counting_forwards, matmul_rates


def model_calls(out: EvalOutput, rounds: int) -> int:
    """Prompts generation answered: one per pick, plus the invalid answer that ended a user."""
    ended_invalid = [
        rank in (INVALID, UNRANKED) and len(picks) < rounds
        for rank, picks in zip(out.ranks, out.picks, strict=True)
    ]
    return sum(len(p) for p in out.picks) + sum(ended_invalid)


KNOBS = {"users": 20, "generate": 1, "sweep": 0, "matmul_repeats": 20}
#: ``eval_batch_users`` until session 17: what ``ratio_over_reference`` compares against
REFERENCE = 4
SWEEP = (1, 4, 8, 16)


def timed(evaluator, llm, tokenizer, samples, ctx) -> tuple[EvalOutput, float, object]:
    with counting_forwards(llm) as count:
        start = time.perf_counter()
        result = evaluator(llm, tokenizer, samples, ctx)
        seconds = time.perf_counter() - start
    return result, seconds, count


def main(argv: list[str]) -> dict:
    bench = setup(argv, KNOBS)
    plugins, model, knobs = bench.plugins, bench.recommender, bench.knobs
    model.config = model.config.updated(eval_users=knobs["users"])  # read when sampling
    config = model.config
    llm, tokenizer, ctx = model.trained(bench.sft)
    samples = model.eval_samples("test", "eval_users")
    shipped = int(config["eval_batch_users"])
    out = {
        "model": bench.name,
        "backbone": config["llm_backbone"],
        "dataset": bench.dataset,
        "users": len(samples),
        "rounds": int(config["eval_rounds"]),
        "prompt_template": config["prompt_template"],
        "dtype": str(next(llm.parameters()).dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "load_average_before": os.getloadavg()[0],
        "machine": machine(),
        "eval_batch_users": shipped,
    }
    runs = [("generate", "generate", {})] if knobs["generate"] else []
    runs.append(("score", "score", {}))
    whole = {"score_rule": "mean", "score_max_tokens": None}
    if any(config.get(k) != v for k, v in whole.items()):  # what the configured rule buys
        runs.append(("score_mean_whole_answers", "score", whole))
    if knobs["sweep"]:
        runs += [
            (f"score_batch_{b}", "score", {"eval_batch_users": b}) for b in SWEEP if b != shipped
        ]
    for label, mode, _ in runs[:2]:  # warm-up: first calls pay for kernel setup
        plugins.evaluators.get(mode)(llm, tokenizer, samples[:1], ctx)
    results = {}
    for label, mode, changes in runs:
        timed_ctx = replace(ctx, config={**ctx.config, **changes})
        result, seconds, count = timed(
            plugins.evaluators.get(mode), llm, tokenizer, samples, timed_ctx
        )
        results[label] = result
        metrics = output_metrics(result, samples, config["sparsity_buckets"])
        out[label] = {
            "seconds": round(seconds, 2),
            "users_per_s": round(len(samples) / seconds, 4),
            "hr@1": metrics["hr@1"],
            "hr@5": metrics["hr@5"],
            "valid_ratio": metrics["valid_ratio"],
            "executed_gflops_per_s": round(count.flops / seconds / 1e9, 1),
            "tokens_per_forward": round(count.tokens / max(count.calls, 1)),
            **changes,
        }
        if mode == "generate":
            out[label]["prompts_per_user"] = model_calls(result, out["rounds"]) / len(samples)
    rows = out["score"]["tokens_per_forward"]
    out["matmul_gflops_per_s"] = {
        dtype: matmul_rates(llm, rows, getattr(torch, dtype), knobs["matmul_repeats"], 0)
        for dtype in ("bfloat16", "float32")
    }
    peak = out["matmul_gflops_per_s"].get(out["dtype"], out["matmul_gflops_per_s"]["float32"])
    for label, mode, _ in runs:
        if mode == "score":
            row = out[label]
            row["fraction_of_matmul_rate"] = round(row["executed_gflops_per_s"] / peak["layer"], 3)
            row["rank_changes_vs_score"] = int(
                (results[label].ranks != results["score"].ranks).sum()
            )
    if "generate" in out:
        out["ratio_generate_over_score"] = round(
            out["generate"]["seconds"] / out["score"]["seconds"], 2
        )
    reference = out.get(f"score_batch_{REFERENCE}", out["score"] if shipped == REFERENCE else None)
    if reference is not None:
        out["ratio_over_reference"] = round(reference["seconds"] / out["score"]["seconds"], 2)
    print_summary(out, runs)
    target = bench.results / f"inference-{bench.name}-{config['llm_backbone']}.json"
    write_json(target, out)
    return out


def print_summary(out: dict, runs: list) -> None:
    users = out["users"]
    if "generate" in out:
        g = out["generate"]
        print(
            f"generate ({out['rounds']} rounds): {g['seconds']:.1f} s for {users} users, "
            f"{g['prompts_per_user']:.2f} prompts per user"
        )
    for label, mode, _ in runs:
        if mode == "score":
            r = out[label]
            print(
                f"{label:<28} {r['seconds']:>7.1f} s {r['users_per_s']:>7.2f} users/s "
                f"{r['executed_gflops_per_s']:>7.1f} GFLOP/s = {r['fraction_of_matmul_rate']:.1%} "
                f"of the matmul rate; ranks changed: {r['rank_changes_vs_score']}/{users}"
            )
    for dtype, m in out["matmul_gflops_per_s"].items():
        print(f"matmul {dtype} at {out['score']['tokens_per_forward']} rows: {m['layer']} GFLOP/s")
    if "ratio_generate_over_score" in out:
        print(f"ratio generate/score: {out['ratio_generate_over_score']:.2f}x")
    if "ratio_over_reference" in out:
        print(
            f"ratio score (eval_batch_users={out['eval_batch_users']}) over the session-16 "
            f"default ({REFERENCE}): {out['ratio_over_reference']:.2f}x"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
