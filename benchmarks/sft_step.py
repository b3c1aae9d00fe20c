"""Wall time of one SFT micro-batch (forward + backward): the shipped step vs the naive one.

    python benchmarks/sft_step.py --model=LLaRA --dataset=Game --data_path=../shared/data \
        --batches=6

naive: autograd anomaly mode on (what importing RecBole's SINE module switches on for the whole
process) and HF's ``labels=`` loss, which runs the LM head over every prompt position.
shipped: anomaly mode off and :func:`answer_loss` (logits only where answer tokens are
predicted). Both run on the same fresh LoRA model and the same micro-batches, half text-only and
half hybrid prompts (the curriculum's two ends), after one warm-up micro-batch each; the losses
must agree. Prints both times and the ratio naive/shipped, and writes
benchmarks/results/sft-step-<model>-<backbone>.json (``--results_dir`` moves it). Any other
--key=value is a config override, as in the CLI.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from cprec_recbole.io import write_json
from cprec_recbole.llm.batching import encode_batch
from cprec_recbole.llm.losses import answer_loss
from cprec_recbole.llm.projector import embed_batch

from harness import setup


def labels_loss(model, batch, item_embeddings, projector) -> torch.Tensor:
    """The naive loss: HF computes logits and the softmax at every position, prompt included."""
    embeds = embed_batch(model, batch, item_embeddings, projector)
    return model(
        inputs_embeds=embeds,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        labels=batch.labels,
    ).loss


def timed_steps(model, batches, ctx, loss_fn, anomaly: bool) -> tuple[float, list[float]]:
    """Seconds for forward + backward over ``batches`` (after one untimed warm-up) and losses."""
    losses = []
    torch.manual_seed(0)  # the same LoRA dropout masks in both runs
    with torch.autograd.set_detect_anomaly(anomaly, check_nan=anomaly):
        loss_fn(model, batches[0], ctx.item_embeddings, ctx.projector).backward()
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        for batch in batches:
            loss = loss_fn(model, batch, ctx.item_embeddings, ctx.projector)
            loss.backward()
            losses.append(loss.item())
            model.zero_grad(set_to_none=True)
        return time.perf_counter() - start, losses


def main(argv: list[str]) -> dict:
    bench = setup(argv, {"batches": 6}, before="sft")
    config, recommender, n_batches = bench.config, bench.recommender, bench.knobs["batches"]
    model, tokenizer, ctx = recommender.load()
    model.train()
    micro = int(config["micro_batch_size"])
    samples = recommender.epoch_samples(recommender.train_windows())(0)[: micro * n_batches]
    batches = [
        encode_batch(
            tokenizer,
            recommender.template,
            samples[first : first + micro],
            ctx.titles,
            ctx.item_index,
            ctx.noun,
            with_answer=True,
            hybrid=recommender.text_template is None or i % 2 == 1,
            text_template=recommender.text_template,
        ).to(model.device)
        for i, first in enumerate(range(0, len(samples), micro))
    ]
    naive_s, naive_losses = timed_steps(model, batches, ctx, labels_loss, anomaly=True)
    shipped_s, shipped_losses = timed_steps(model, batches, ctx, answer_loss, anomaly=False)
    torch.testing.assert_close(shipped_losses, naive_losses, rtol=2e-2, atol=2e-2)
    out = {
        "model": bench.name,
        "backbone": config["llm_backbone"],
        "dataset": bench.dataset,
        "dtype": str(model.dtype),
        "lora_layers": config.get("lora_layers"),
        "micro_batches": len(batches),
        "micro_batch_size": micro,
        "mean_tokens_per_row": round(
            sum(b.attention_mask.sum().item() for b in batches) / len(samples), 1
        ),
        "naive_s_per_sample": round(naive_s / len(samples), 3),
        "shipped_s_per_sample": round(shipped_s / len(samples), 3),
        "ratio_naive_over_shipped": round(naive_s / shipped_s, 2),
    }
    print(f"naive (anomaly mode, full-sequence LM loss): {out['naive_s_per_sample']} s/sample")
    print(f"shipped (answer-only logits): {out['shipped_s_per_sample']} s/sample")
    print(f"ratio naive/shipped: {out['ratio_naive_over_shipped']:.2f}x")
    write_json(bench.results / f"sft-step-{bench.name}-{config['llm_backbone']}.json", out)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
