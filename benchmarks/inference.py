"""Wall time of `generate` (iterative, 5 rounds for HR@5) vs `score` on the same model and users.

    python benchmarks/inference.py --model=LLaRA --dataset=Game --data_path=../shared/data \
        --llm_backbone=smollm2-135m --users=50

The model's cached stages are reused (a fine-tuned LLaRA answers validly, so generation really
runs its 5 rounds; a zero-shot model that answers invalidly stops after one). Prints both times,
users/s and the ratio generate/score (when the configured score rule is another, also the time of
the mean log-likelihood of whole answers), after one warm-up user per mode, and writes
benchmarks/results/inference-<model>-<backbone>.json (``--results_dir`` moves it). Any other
--key=value is a config override, as in the CLI.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

from cprec_recbole.evaluation import INVALID, UNRANKED
from cprec_recbole.io import write_json
from cprec_recbole.llm.inference import EvalOutput, output_metrics
from cprec_recbole.stages import machine

from harness import setup


def model_calls(out: EvalOutput, rounds: int) -> int:
    """Prompts generation answered: one per pick, plus the invalid answer that ended a user."""
    ended_invalid = [
        rank in (INVALID, UNRANKED) and len(picks) < rounds
        for rank, picks in zip(out.ranks, out.picks, strict=True)
    ]
    return sum(len(p) for p in out.picks) + sum(ended_invalid)


def main(argv: list[str]) -> dict:
    bench = setup(argv, {"users": 20})
    plugins, model = bench.plugins, bench.recommender
    model.config = model.config.updated(eval_users=bench.knobs["users"])  # read when sampling
    config = model.config
    llm, tokenizer, ctx = model.trained(bench.sft)
    samples = model.eval_samples("test", "eval_users")
    out = {
        "model": bench.name,
        "backbone": config["llm_backbone"],
        "dataset": bench.dataset,
        "users": len(samples),
        "rounds": int(config["eval_rounds"]),
        "prompt_template": config["prompt_template"],
        "machine": machine(),
    }
    runs = [("generate", "generate", {}), ("score", "score", {})]
    whole = {"score_rule": "mean", "score_max_tokens": None}
    if any(config.get(k) != v for k, v in whole.items()):  # what the configured rule buys
        runs.append(("score_mean_whole_answers", "score", whole))
    for mode in ("generate", "score"):  # warm-up: first calls pay for kernel setup
        plugins.evaluators.get(mode)(llm, tokenizer, samples[:1], ctx)
    for label, mode, changes in runs:
        evaluator = plugins.evaluators.get(mode)
        timed_ctx = replace(ctx, config={**ctx.config, **changes})
        start = time.perf_counter()
        result = evaluator(llm, tokenizer, samples, timed_ctx)
        seconds = time.perf_counter() - start
        metrics = output_metrics(result, samples, config["sparsity_buckets"])
        out[label] = {
            "seconds": round(seconds, 2),
            "users_per_s": round(len(samples) / seconds, 4),
            "hr@1": metrics["hr@1"],
            "hr@5": metrics["hr@5"],
            "valid_ratio": metrics["valid_ratio"],
            **changes,
        }
        if mode == "generate":
            out[label]["prompts_per_user"] = model_calls(result, out["rounds"]) / len(samples)
    out["ratio_generate_over_score"] = round(
        out["generate"]["seconds"] / out["score"]["seconds"], 2
    )
    print(
        f"generate ({out['rounds']} rounds): {out['generate']['seconds']:.1f} s for "
        f"{len(samples)} users, {out['generate']['prompts_per_user']:.2f} prompts per user"
    )
    rule = config.get("score_rule", "mean")
    if rule == "mean":
        rule += f", answer tokens: {config.get('score_max_tokens') or 'all'}"
    print(f"score ({rule}): {out['score']['seconds']:.1f} s for {len(samples)} users")
    if "score_mean_whole_answers" in out:
        print(f"score (mean, whole answers): {out['score_mean_whole_answers']['seconds']:.1f} s")
    print(f"ratio generate/score: {out['ratio_generate_over_score']:.2f}x")
    target = bench.results / f"inference-{bench.name}-{config['llm_backbone']}.json"
    write_json(target, out)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
