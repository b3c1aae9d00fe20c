"""Real (non-pad) tokens per second of CPT training: random-order micro-batches vs length-grouped.

    python benchmarks/cpt_throughput.py --model=CPRec --dataset=Game --data_path=../shared/data \
        --output_dir=/root/cprec-saved --samples=64 --variants=1 --pause_pid=<pid>

The same ``--samples`` corpus rows (a seeded subset of the CPT training order) in both modes, with
the config's CPT settings (backbone, LoRA, ``max_title_tokens``, ``cpt_micro_batch_size``).
naive: the samples in random order cut into micro-batches, each padded to its longest row (a
shuffling DataLoader with a padding collator), in peft's default precision (LoRA weights fp32,
every adapter input cast up to fp32 and back); shipped: :func:`length_grouped` micro-batches in the
loop's ``mixed_precision`` (``autocast: true``: adapter matmuls in bf16 on fp32 weights) with the
config's ``compile`` (the cpu profile: the decoder under ``torch.compile``); eager: the same
without compiling (what shipped until session 13), printed as the ratio shipped / eager. Every
micro-batch: encode, forward, answer-only loss, backward, an Adam step over LoRA. Each mode
starts from the same fresh LoRA state and runs one untimed warm-up micro-batch first.

FLOPs of a micro-batch of B rows padded to T tokens (frozen weights need no weight gradients):
``(4 N_frozen + 6 N_lora) B T + 12 L d_q B T^2 + 4 d V B k``, N_frozen the decoder layers' linear
weights (no embeddings), N_lora the LoRA weights (forward, input and weight gradients), L layers,
d_q the query width (attention scores and values, forward 4, backward 8: a masked kernel computes
the whole square), d the hidden size, V the vocabulary and k the LM-head positions kept by
``answer_loss``. "Useful" FLOPs count real tokens only (attention: the causal half of each row's
square). The script times bf16/fp32 ``F.linear`` with the model's own weight shapes and reports
the fraction of that matmul rate training reaches, the 10 ops with the most self CPU time under
``torch.profiler`` (``--profile`` micro-batches; 0 skips), and the whole CPT plan's padding at
micro-batch 4/8/16 (token counts only, no training). ``--variants=1`` adds measured rows that
change one thing: grouping or autocast alone, ``lora_dropout=0.1``, LoRA weights in the compute
dtype (pure bf16: not shipped, Adam on bf16 weights rounds away small updates), micro-batch 8;
and naive at LLaRA's ``lora_dropout=0.1`` (how SFT trained before the cpu profile), printed as a
second ratio: the shipped cpu profile over that. ``--sft=1`` (default) adds the SFT step,
measured the same way (:func:`sft_rows`: LLaRA's windows, hybrid prompts), naive and shipped, and
its fraction of the matmul rate.
``--pause_pid=PID`` stops that process (a training run sharing the CPU) during each timed
measurement and resumes it after.
Writes benchmarks/results/cpt-throughput-<backbone>.json (``--results_dir`` moves it); any other
--key=value is a config override, as in the CLI.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from cprec_recbole.data.corpus import Corpus, corpus_stage, load_corpus
from cprec_recbole.io import write_json
from cprec_recbole.llm.backbone import add_lora, load_backbone
from cprec_recbole.llm.batching import EncodedBatch, encode_batch, prompt_lengths, prompt_titles
from cprec_recbole.llm.cpt import cpt_plan, length_grouped, sample_lengths, variant_order
from cprec_recbole.llm.loop import CompiledDecoder, adam, mixed_precision
from cprec_recbole.llm.losses import answer_loss, answer_span
from cprec_recbole.llm.prompts import answer_text
from cprec_recbole.llm.sft import (
    SFTSetup,
    encode_sft,
    load_trainable_state,
    objective_weights,
    sft_loss,
    sft_plan,
    trainable_state,
)
from cprec_recbole.stages import machine

from harness import configure
from harness import setup as harness_setup
from rates import Dims, matmul_rates, model_dims, paused

#: peft's default precision: fp32 adapters, every adapter input cast up (the naive rows)
PEFT_PRECISION = {"autocast": False, "compile": False}
#: the step shipped until session 13: grouped + autocast, eager
EAGER = {"compile": False}
LLARA_DROPOUT = {"lora_dropout": 0.1}
LLARA_NAIVE = "naive + lora_dropout=0.1 (LLaRA's)"
KNOBS = {"samples": 64, "variants": 0, "profile": 3, "matmul_repeats": 20, "pause_pid": 0, "sft": 1}
FLOPS_FORMULA = (
    "(4*N_frozen + 6*N_lora)*B*T + 12*L*d_q*B*T^2 + 4*d*V*B*k per micro-batch of B rows padded "
    "to T (useful: real tokens only, attention 6*L*d_q*len^2 per row); frozen weights get no "
    "weight gradients"
)


# ------------------------------------------------------------------ pure bookkeeping
def random_micro_batches(ids: Sequence[int], micro: int, seed: int) -> list[list[int]]:
    """What a shuffling DataLoader yields: the samples in random order, cut every ``micro``."""
    order = np.random.default_rng(seed).permutation(np.asarray(ids))
    return [order[i : i + micro].tolist() for i in range(0, len(order), micro)]


def padding(micros: Sequence[Sequence[int]], lengths: np.ndarray) -> dict:
    """Real and padded tokens of micro-batches each padded to its longest row."""
    real = sum(int(lengths[m].sum()) for m in micros)
    padded = sum(len(m) * int(lengths[m].max()) for m in micros if len(m))
    return {
        "real_tokens": real,
        "padded_tokens": padded,
        "padding_fraction": round(1 - real / max(padded, 1), 4),
    }


def train_flops(lengths: Sequence[int], width: int, kept: int, dims: Dims) -> tuple[float, float]:
    """(executed, useful) FLOPs of one micro-batch's forward + backward; see the module doc."""
    rows = len(lengths)
    per_token = 4 * dims.frozen + 6 * dims.lora
    attention = 12 * dims.layers * dims.query
    head = 4 * dims.hidden * dims.vocab * kept * rows
    executed = per_token * rows * width + attention * rows * width**2 + head
    useful = per_token * sum(lengths) + attention / 2 * sum(n * n for n in lengths) + head
    return float(executed), float(useful)


def rate_row(name: str, micro: int, seconds: float, real: int, padded: int, flops) -> dict:
    """A mode's figures; ``flops`` = (executed, useful)."""
    return {
        "mode": name,
        "micro_batch_size": micro,
        "seconds": round(seconds, 2),
        "real_tokens": real,
        "padded_tokens": padded,
        "padding_fraction": round(1 - real / max(padded, 1), 4),
        "real_tokens_per_s": round(real / seconds, 1),
        "padded_tokens_per_s": round(padded / seconds, 1),
        "executed_gflops_per_s": round(flops[0] / seconds / 1e9, 1),
        "useful_gflops_per_s": round(flops[1] / seconds / 1e9, 1),
    }


# ------------------------------------------------------------------ the measured parts
class Setup(NamedTuple):
    config: dict
    corpus: Corpus
    tokenizer: object
    template: object
    titles: dict
    base: torch.nn.Module  # the backbone without LoRA, copied for each mode
    pause_pid: int


def token_lengths(s: Setup, rows: np.ndarray) -> np.ndarray:
    """Exact prompt + answer tokens of corpus ``rows``, as an array over the whole corpus."""
    samples = s.corpus.samples(rows)
    prompts = prompt_lengths(s.tokenizer, s.template, samples, s.titles, "item")
    answers = s.tokenizer(
        [answer_text(s.titles[x.target]) for x in samples], add_special_tokens=False
    )
    out = np.zeros(len(s.corpus), dtype=np.int64)
    out[rows] = np.array(prompts) + np.array([len(a) for a in answers["input_ids"]])
    return out


def estimated_lengths(s: Setup) -> np.ndarray:
    """The estimate CPT groups by (:func:`sample_lengths`), as ``CPT._lengths`` computes it."""
    codes = np.arange(len(s.corpus.titles))
    ids = s.tokenizer([s.titles[c] for c in codes], add_special_tokens=False)["input_ids"]
    fixed = len(s.tokenizer(s.template.text, add_special_tokens=True)["input_ids"])
    return sample_lengths(s.corpus, np.array([len(i) for i in ids]), fixed)


def lora_model(s: Setup, overrides: dict, lora_in_compute_dtype: bool):
    """A fresh LoRA model (the same seeded init for every mode) on a copy of the backbone."""
    torch.manual_seed(int(s.config["cpt_seed"]))
    model = add_lora(copy.deepcopy(s.base), {**s.config, **overrides})
    if lora_in_compute_dtype:  # what peft's autocast_adapter_dtype=False would give
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(s.base.dtype)
    model.train()
    return model


def cpt_loss(s: Setup, model, ids: list[int]) -> tuple[EncodedBatch, torch.Tensor]:
    """One CPT micro-batch's answer loss (no item embeddings: the corpus has no SASRec)."""
    batch = encode_batch(
        s.tokenizer, s.template, s.corpus.samples(ids), s.titles, {}, "item", with_answer=True
    )
    return batch, answer_loss(model, batch, None, None)


def timed(
    name: str, micros, model, projector, loss_fn, autocast: bool, compiled, lr: float, ctx: tuple
) -> dict:
    """Train on ``micros`` (``loss_fn(ids) -> (batch, loss)``: encode, forward, loss), each
    micro-batch then backward and an Adam step, in the loop's ``mixed_precision`` and under
    ``compiled``, after one untimed warm-up micro-batch, from the state the model came in;
    ``ctx`` = (seed, pause pid)."""
    seed, pause_pid = ctx
    fresh, dims = trainable_state(model, projector), model_dims(model)

    def train(ids, optimizer) -> tuple[EncodedBatch, float]:
        with mixed_precision(model, autocast), compiled.active():
            batch, loss = loss_fn(ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return batch, float(loss.detach())

    real = padded = 0
    flops = np.zeros(2)
    losses = []
    with paused(pause_pid):
        warm = time.perf_counter()  # the first micro-batch compiles, where the mode compiles
        _, first_loss = train(micros[0], adam(model, projector, lr))
        warm = time.perf_counter() - warm
        load_trainable_state(model, projector, fresh)
        optimizer = adam(model, projector, lr)
        torch.manual_seed(seed)  # the same dropout masks in every mode
        start, cpu = time.perf_counter(), time.process_time()
        for ids in micros:
            batch, loss = train(ids, optimizer)
            losses.append(loss)
            mask = batch.attention_mask
            real, padded = real + int(mask.sum()), padded + mask.numel()
            kept = answer_span(batch.labels) + 1
            flops += train_flops(mask.sum(1).tolist(), mask.shape[1], kept, dims)
        seconds = time.perf_counter() - start
        cpu_share = (time.process_time() - cpu) / seconds / torch.get_num_threads()
    micro = max(len(m) for m in micros)
    return {
        **rate_row(name, micro, seconds, real, padded, flops),
        "mean_loss": round(float(np.mean(losses)), 4),
        "first_loss": round(first_loss, 5),  # from the same fresh LoRA state in every mode
        "warmup_s": round(warm, 1),
        "cpu_share": round(cpu_share, 2),  # below ~0.9: another process took CPU meanwhile
    }


def measure(s: Setup, name: str, micros, overrides=None, lora_in_compute_dtype=False) -> dict:
    """CPT on ``micros`` from a fresh LoRA state (:func:`timed`)."""
    overrides = overrides or {}
    model = lora_model(s, overrides, lora_in_compute_dtype)
    return timed(
        name,
        micros,
        model,
        None,
        lambda ids: cpt_loss(s, model, ids),
        bool(overrides.get("autocast", s.config["autocast"])),
        CompiledDecoder(model, bool(overrides.get("compile", s.config["compile"]))),
        float(s.config["eta_h"]),
        (int(s.config["cpt_seed"]), s.pause_pid),
    )


def sft_rows(argv: list[str], samples: int, pause_pid: int) -> dict:
    """The SFT step on the same footing: LLaRA's first ``samples`` training windows of the
    dataset in ``sft_plan``'s random order, hybrid prompts (the curriculum's end: SASRec rows
    through the projector), the config's ``micro_batch_size`` and ``sft_objective``; shipped
    (the loop's precision and compile) and naive (peft's precision, eager), each from a fresh
    LoRA model and projector. CPRec's SFT is this step from another adapter."""
    argv = [a for a in argv if not a.startswith("--model=")] + ["--model=LLaRA"]
    bench = harness_setup(argv, KNOBS, before="sft")
    rec, config = bench.recommender, bench.recommender.config
    windows = rec.epoch_samples(rec.train_windows())(0)
    micro, seed = int(config["micro_batch_size"]), int(config["seed"])
    ids = sft_plan(min(samples, len(windows)), 1, micro, 1, seed).steps
    micros = [m for step in ids for m in step]
    weights = objective_weights(config)
    rows: dict[str, dict] = {}
    counted: dict[tuple[int, ...], EncodedBatch] = {}  # each micro-batch's tokens, for the counts
    for name, overrides in (("naive", PEFT_PRECISION), ("shipped", {})):
        torch.manual_seed(seed)
        model, tokenizer, ctx = rec.load()
        model.train()
        setup = SFTSetup(tokenizer, rec.template, None, ctx, None, None, None)
        if not counted:  # encoded once, outside the timed steps (the loss encodes its own)
            for m in micros:
                counted[tuple(m)] = encode_sft(setup, [windows[i] for i in m], True, True)

        def loss_fn(part, model=model, setup=setup) -> tuple[EncodedBatch, torch.Tensor]:
            loss = sft_loss(model, setup, [windows[i] for i in part], True, weights)
            return counted[tuple(part)], loss

        rows[name] = timed(
            f"sft {name}",
            micros,
            model,
            ctx.projector,
            loss_fn,
            bool(overrides.get("autocast", config["autocast"])),
            CompiledDecoder(model, bool(overrides.get("compile", config["compile"]))),
            float(config["learning_rate"]),
            (seed, pause_pid),
        )
    return rows


def fp32_loss(s: Setup, ids: list[int]) -> float:
    """The first micro-batch's loss from the fresh LoRA state with every weight in fp32: the
    reference that tells bf16 rounding (eager or compiled) from a change of what is computed."""
    model = lora_model(s, {}, False).float()
    with torch.no_grad():
        return round(float(cpt_loss(s, model, ids)[1]), 5)


def profile_steps(s: Setup, micros, n: int) -> dict:
    """``torch.profiler`` over ``n`` micro-batches: the 10 ops with the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    model = lora_model(s, {}, False)
    optimizer = adam(model, None, float(s.config["eta_h"]))
    compiled = CompiledDecoder(model, bool(s.config["compile"]))

    def step(ids: list[int]) -> None:
        with mixed_precision(model, s.config["autocast"]), compiled.active():
            loss = cpt_loss(s, model, ids)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with paused(s.pause_pid):
        step(micros[0])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for ids in micros[:n]:
                step(ids)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    matmul = (
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    )
    return {
        "micro_batches": n,
        "self_cpu_s_total": round(total / 1e6, 2),
        "matmul_share": round(
            sum(e.self_cpu_time_total for e in events if e.key in matmul) / total, 3
        ),
        "top_ops": [
            {
                "op": e.key,
                "self_cpu_s": round(e.self_cpu_time_total / 1e6, 3),
                "share": round(e.self_cpu_time_total / total, 3),
                "calls": e.count,
            }
            for e in top
        ],
    }


def plan_padding(s: Setup, order: np.ndarray, phases: dict, estimate: np.ndarray) -> dict:
    """Padding of the whole CPT plan, random order vs length-grouped, at micro-batch 4/8/16."""
    exact = token_lengths(s, order)
    seed = int(s.config["cpt_seed"])
    out = {}
    for micro in (4, 8, 16):
        grouped, _ = cpt_plan(order, phases, estimate, micro, 1, seed)
        shuffled, _ = cpt_plan(order, phases, None, micro, 1, seed)
        g = padding([m for st in grouped.steps for m in st], exact)
        n = padding([m for st in shuffled.steps for m in st], exact)
        out[str(micro)] = {
            "naive_padding_fraction": n["padding_fraction"],
            "shipped_padding_fraction": g["padding_fraction"],
            "padded_tokens_ratio_naive_over_shipped": round(
                n["padded_tokens"] / g["padded_tokens"], 3
            ),
        }
    return {
        "samples": len(order),
        "mean_tokens_per_sample": round(float(exact[order].mean()), 1),
        "by_micro_batch_size": out,
    }


# ------------------------------------------------------------------ main
def setup(argv: list[str]) -> tuple[Setup, dict, Path]:
    _, _, config, plugins, results, knobs = configure(argv, KNOBS, model="CPRec")
    corpus = load_corpus(corpus_stage(config, plugins))
    template = plugins.prompt_templates.get(config["cpt_template"])
    base, tokenizer = load_backbone(config, plugins, [*corpus.titles.values(), template.text])
    titles = prompt_titles(tokenizer, corpus.titles, config)
    return (
        Setup(config, corpus, tokenizer, template, titles, base, knobs["pause_pid"]),
        knobs,
        results,
    )


def variant_rows(
    s: Setup, ids: np.ndarray, estimate: np.ndarray, micro: int, seed: int
) -> list[dict]:
    """Measured rows that change one setting of the shipped mode (see the module doc)."""
    grouped, grouped8 = (
        length_grouped(ids, estimate, micro, seed),
        length_grouped(ids, estimate, 8, seed),
    )
    plain = PEFT_PRECISION
    return [
        measure(s, "length_grouped, autocast off", grouped, plain),
        measure(s, "random order, autocast on", random_micro_batches(ids, micro, seed)),
        measure(s, "shipped + lora_dropout=0.1", grouped, LLARA_DROPOUT),
        measure(s, "shipped + LoRA weights in compute dtype", grouped, plain, True),
        measure(s, "naive, micro 8", random_micro_batches(ids, 8, seed), plain),
        measure(s, "shipped, micro 8", grouped8),
        measure(s, LLARA_NAIVE, random_micro_batches(ids, micro, seed), LLARA_DROPOUT | plain),
    ]


def main(argv: list[str]) -> dict:
    s, knobs, results = setup(argv)
    config, seed = s.config, int(s.config["cpt_seed"])
    micro = int(config["cpt_micro_batch_size"])
    order, phases = variant_order(
        s.corpus.phase,
        config["cpt_variant"],
        seed,
        float(config["cpt_warmup_ratio"]),
        config.get("cpt_samples"),
        config.get("cpt_mixed_samples"),
    )
    ids = np.random.default_rng(seed).choice(
        order, min(knobs["samples"], len(order)), replace=False
    )
    estimate = estimated_lengths(s)
    naive = measure(
        s,
        "naive (random order, autocast off)",
        random_micro_batches(ids, micro, seed),
        PEFT_PRECISION,
    )
    grouped = length_grouped(ids, estimate, micro, seed)
    eager = measure(s, "length_grouped + autocast, eager (shipped to session 12)", grouped, EAGER)
    shipped = measure(s, "shipped (length_grouped, compile: config)", grouped)
    rows = round(shipped["padded_tokens"] / -(-len(ids) // micro))  # a micro-batch's B x T
    matmul = {
        dtype: matmul_rates(
            s.base, rows, getattr(torch, dtype), knobs["matmul_repeats"], s.pause_pid
        )
        for dtype in ("bfloat16", "float32")
    }
    peak = matmul[str(s.base.dtype).removeprefix("torch.")]["layer"]
    out = {
        "model": config["model"],
        "backbone": config["llm_backbone"],
        "dtype": str(s.base.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "machine": machine(),
        "load_average_before": os.getloadavg()[0],
        "lora_layers": config.get("lora_layers"),
        "lora_dropout": float(config.get("lora_dropout", 0.1)),
        "max_title_tokens": config.get("max_title_tokens"),
        "samples": len(ids),
        "flops_formula": FLOPS_FORMULA,
        "dims": model_dims(lora_model(s, {}, False))._asdict(),
        "naive": naive,
        "eager": eager,
        "shipped": shipped,
        "ratio_shipped_over_eager_real_tokens_per_s": round(
            shipped["real_tokens_per_s"] / eager["real_tokens_per_s"], 2
        ),
        "first_loss_fp32": fp32_loss(s, grouped[0]),
        "ratio_shipped_over_naive_real_tokens_per_s": round(
            shipped["real_tokens_per_s"] / naive["real_tokens_per_s"], 2
        ),
        "matmul_gflops_per_s": matmul,
        "matmul_rows": rows,
        "fraction_of_matmul_rate": {
            "executed": round(shipped["executed_gflops_per_s"] / peak, 3),
            "useful": round(shipped["useful_gflops_per_s"] / peak, 3),
            "eager_executed": round(eager["executed_gflops_per_s"] / peak, 3),
        },
        "plan_padding": plan_padding(s, order, phases, estimate),
    }
    if knobs["sft"]:
        out["sft"] = sft_rows(argv, knobs["samples"], s.pause_pid)
        for name, row in out["sft"].items():
            out["fraction_of_matmul_rate"][f"sft_{name}_executed"] = round(
                row["executed_gflops_per_s"] / peak, 3
            )
        out["ratio_sft_shipped_over_naive_real_tokens_per_s"] = round(
            out["sft"]["shipped"]["real_tokens_per_s"] / out["sft"]["naive"]["real_tokens_per_s"], 2
        )
    if knobs["profile"]:
        out["profile"] = profile_steps(
            s, length_grouped(ids, estimate, micro, seed), knobs["profile"]
        )
    if knobs["variants"]:
        out["variants"] = variant_rows(s, ids, estimate, micro, seed)
        llara = next(v for v in out["variants"] if v["mode"] == LLARA_NAIVE)
        out["ratio_shipped_over_naive_at_llara_dropout"] = round(
            shipped["real_tokens_per_s"] / llara["real_tokens_per_s"], 2
        )
    write_json(results / f"cpt-throughput-{config['llm_backbone']}.json", out)
    print_table(out)
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def print_table(out: dict) -> None:
    rows = [out["naive"], out["eager"], out["shipped"], *out.get("variants", [])]
    rows += list(out.get("sft", {}).values())
    print(f"{'mode':<50}{'micro':>6}{'s':>8}{'real tok/s':>11}{'pad':>7}{'GFLOP/s':>9}{'cpu':>6}")
    for r in rows:
        print(
            f"{r['mode']:<50}{r['micro_batch_size']:>6}{r['seconds']:>8}{r['real_tokens_per_s']:>11}"
            f"{r['padding_fraction']:>7.1%}{r['executed_gflops_per_s']:>9}{r['cpu_share']:>6}"
        )
    print(
        f"ratio shipped/naive (real tokens/s): {out['ratio_shipped_over_naive_real_tokens_per_s']:.2f}x"
    )
    print(
        f"ratio shipped/eager (real tokens/s): {out['ratio_shipped_over_eager_real_tokens_per_s']:.2f}x"
    )
    print(
        f"first micro-batch loss: shipped {out['shipped']['first_loss']}, eager "
        f"{out['eager']['first_loss']}, fp32 eager {out['first_loss_fp32']}"
    )
    if "ratio_shipped_over_naive_at_llara_dropout" in out:
        ratio = out["ratio_shipped_over_naive_at_llara_dropout"]
        print(f"ratio shipped/{LLARA_NAIVE} (real tokens/s): {ratio:.2f}x")
    for dtype, m in out["matmul_gflops_per_s"].items():
        print(f"matmul {dtype}: {m['per_shape']} GFLOP/s; decoder-layer mix {m['layer']} GFLOP/s")
    f = out["fraction_of_matmul_rate"]
    print(
        f"training reaches {f['executed']:.1%} (executed) / {f['useful']:.1%} (useful) of it; "
        f"eager: {f['eager_executed']:.1%}"
    )
    if "sft" in out:
        sft = (
            out["sft"]["shipped"]["executed_gflops_per_s"] / out["shipped"]["executed_gflops_per_s"]
        )
        print(
            f"SFT shipped reaches {f['sft_shipped_executed']:.1%} of it (naive "
            f"{f['sft_naive_executed']:.1%}; {sft:.2f}x CPT's GFLOP/s); ratio SFT shipped/naive "
            f"(real tokens/s): {out['ratio_sft_shipped_over_naive_real_tokens_per_s']:.2f}x"
        )
    for micro, p in out["plan_padding"]["by_micro_batch_size"].items():
        print(
            f"whole plan, micro {micro}: padding naive {p['naive_padding_fraction']:.1%}, "
            f"shipped {p['shipped_padding_fraction']:.1%}"
        )
    for op in out.get("profile", {}).get("top_ops", []):
        print(f"  {op['op']:<50}{op['self_cpu_s']:>9.3f} s{op['share']:>7.1%}{op['calls']:>7}")


if __name__ == "__main__":
    main(sys.argv[1:])
