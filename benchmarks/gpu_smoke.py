"""A smoke run of the GPU path: LLaRA and CPRec end to end on a few hundred samples, with rates.

    python benchmarks/gpu_smoke.py --dataset=Game --data_path=../shared/data \
        --llm_path=/models/Llama-2-7b-hf --samples=256 --users=32

Each model's whole pipeline (data, SASRec, for CPRec the corpus and CPT, SFT, evaluation) runs in
a fresh output folder with ``profile: gpu`` (LLaMA-2-7B in bf16, LoRA and projector fp32 under
autocast): ``--samples`` SFT samples and, for CPRec, as many CPT samples (a quarter of them
mixed), one epoch, ``--users`` validation and test users. Printed per model and training stage:
real (non-pad) tokens per second, the peak GPU memory of the model's run, and the fraction of
the GPU's bf16 matmul rate that training reached, counting ``4 N_frozen + 6 N_lora`` FLOPs per
token (forward and input gradient of the frozen decoder weights; forward and both gradients of
LoRA; attention, the LM head and a checkpointed layer's recomputation left out) against a square
bf16 matmul of ``--matmul_size`` timed here. The CPT stage counts its tokens as its plan does
(titles cut as in prompts, plus the template); SFT's are counted from the epoch's samples.

Nothing else in the project needs a GPU; asked for CUDA where there is none, it says so in one
line and exits 2. ``--device=cpu`` runs the same on the CPU (the tests do, with tiny-random and
a few samples), where memory is the process's peak resident size. Any other ``--key=value`` is a
config override (``--backbone_cache`` saves re-reading a converted backbone). Writes
benchmarks/results/gpu-smoke-<backbone>.json (``--results_dir`` moves it).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from cprec_recbole.io import write_json
from cprec_recbole.llm.batching import answer_ids, prompt_lengths
from cprec_recbole.llm.loop import ADAPTER
from cprec_recbole.llm.prompts import answer_text
from cprec_recbole.pipeline import run_pipeline
from cprec_recbole.run_config import RunConfig
from cprec_recbole.stages import peak_memory_mb, read_manifest

from harness import configure

KNOBS = {"samples": 256, "users": 32, "matmul_size": 8192, "matmul_repeats": 20}
MODELS = ("LLaRA", "CPRec")


def knob(argv: list[str], name: str) -> int:
    """A knob's value as given on the command line, else its default."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    return int(given[-1] if given else KNOBS[name])


def device_or_exit(argv: list[str]) -> torch.device:
    """The ``--device`` asked for (cuda by default); one line and exit 2 if it is not here."""
    wanted = ([a.split("=", 1)[1] for a in argv if a.startswith("--device=")] or ["cuda"])[-1]
    device = torch.device(wanted)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_smoke: --device={wanted} but torch {torch.__version__} sees no CUDA device; "
            "run it on a GPU machine, or with --device=cpu for the small CPU check",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_matmul_rate(device: torch.device, n: int, repeats: int) -> float:
    """FLOP/s of an ``n x n x n`` bf16 matmul on ``device`` (after 3 untimed ones)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def flops_per_token(model: torch.nn.Module, lora_weights: int) -> int:
    """``4 N_frozen + 6 N_lora``: N_frozen the decoder layers' matrices (LoRA merged or absent)."""
    frozen = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and ".layers." in n)
    return 4 * frozen + 6 * lora_weights


def sft_tokens(recommender, tokenizer, ctx, epochs: int) -> int:
    """Real tokens SFT trained on: each epoch's prompts (a hybrid and a text-only prompt have
    one placeholder token per item alike) and answers."""
    windows = recommender.train_windows()
    total = 0
    for epoch in range(epochs):
        samples = recommender.epoch_samples(windows)(epoch)
        total += sum(prompt_lengths(tokenizer, ctx.template, samples, ctx.titles, ctx.noun))
        answers = [answer_text(ctx.titles[s.target]) for s in samples]
        total += sum(map(len, answer_ids(tokenizer, answers)))
    return total


def rate(tokens: int, seconds: float, per_token: int, peak: float) -> dict:
    return {
        "tokens": tokens,
        "train_time_s": round(seconds, 2),
        "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
        "matmul_fraction": round(tokens * per_token / max(seconds, 1e-9) / peak, 4),
    }


def run_model(name: str, argv: list[str], device: torch.device, peak: float) -> tuple[dict, dict]:
    """Build ``name``'s whole pipeline; (its stages' rates and memory, the config)."""
    _, _, config, plugins, _, _ = configure(argv, KNOBS, model=name)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run = run_pipeline(name, RunConfig(config), plugins)
    recommender = run.recommender()
    model, tokenizer, ctx = recommender.trained(run.folders["sft"])
    lora = load_file(run.folders["sft"] / ADAPTER / "adapter_model.safetensors")
    per_token = flops_per_token(model, sum(t.numel() for t in lora.values()))
    sft = read_manifest(run.folders["sft"])["metrics"]["epochs"]
    seconds = sum(e["train_time_s"] for e in sft)
    out = {"sft": rate(sft_tokens(recommender, tokenizer, ctx, len(sft)), seconds, per_token, peak)}
    if run.folders.get("cpt") is not None:
        cpt = read_manifest(run.folders["cpt"])["metrics"]
        out["cpt"] = rate(cpt["tokens"], cpt["train_time_s"], per_token, peak)
    if device.type == "cuda":
        out["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    else:
        out["peak_process_memory_mib"] = peak_memory_mb()
    test = json.loads((run.folders["eval"] / "results.json").read_text())["test"]
    out["test"] = {k: test[k] for k in ("hr@1", "valid_ratio", "users")}
    return out, config


def smoke_argv(argv: list[str], output_dir: str) -> list[str]:
    """The run's settings first (the command line, after them, wins)."""
    samples, users = knob(argv, "samples"), knob(argv, "users")
    settings = {
        "profile": "gpu",
        "device": "cuda",
        **({"output_dir": output_dir} if output_dir else {}),
        "sft_samples": samples,
        "cpt_samples": samples,
        "cpt_mixed_samples": max(1, samples // 4),
        "epochs": 1,
        "valid_users": users,
        "eval_users": users,
        "show_progress": False,
    }
    return [f"--{k}={v}" for k, v in settings.items()] + argv


def main(argv: list[str]) -> dict:
    device = device_or_exit(argv)
    given_output = any(a.startswith("--output_dir=") for a in argv)
    output_dir = "" if given_output else tempfile.mkdtemp(prefix="gpu-smoke-")
    peak = bf16_matmul_rate(device, knob(argv, "matmul_size"), knob(argv, "matmul_repeats"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    out = {"device": name, "bf16_matmul_tflops": round(peak / 1e12, 3), "models": {}}
    print(f"{name}: bf16 matmul {knob(argv, 'matmul_size')}^3 at {peak / 1e12:.3f} TFLOP/s")
    try:
        for model in MODELS:
            out["models"][model], config = run_model(
                model, smoke_argv(argv, output_dir), device, peak
            )
            print_model(model, out["models"][model])
    finally:
        if output_dir:
            shutil.rmtree(output_dir, ignore_errors=True)
    out["backbone"], out["dtype"] = config["llm_backbone"], config["dtype"]
    out["samples"], out["users"] = knob(argv, "samples"), knob(argv, "users")
    results = Path(
        next((a.split("=", 1)[1] for a in argv if a.startswith("--results_dir=")), None)
        or Path(__file__).parent / "results"
    )
    write_json(results / f"gpu-smoke-{config['llm_backbone']}.json", out)
    return out


def print_model(model: str, row: dict) -> None:
    memory = (
        f"peak GPU memory {row['peak_gpu_memory_gib']} GiB"
        if "peak_gpu_memory_gib" in row
        else f"peak process memory {row['peak_process_memory_mib']} MiB"
    )
    for stage in ("cpt", "sft"):
        if stage in row:
            r = row[stage]
            print(
                f"{model} {stage}: {r['tokens']} tokens in {r['train_time_s']} s = "
                f"{r['tokens_per_s']} tokens/s, {r['matmul_fraction']:.1%} of the bf16 matmul "
                f"rate; {memory}"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
