"""What data parallelism costs per optimizer step: the all-reduce of the LoRA (+ projector)
gradients, measured on gloo CPU processes here, and the arithmetic for GPUs.

``TrainLoop`` all-reduces every trainable gradient once per optimizer step, in one flat float32
buffer (``all_reduce_gradients``); nothing else crosses ranks while training. This script spawns
``--processes`` gloo processes that all-reduce buffers of each backbone's trainable size, as the
loop does, and reports milliseconds per all-reduce beside the CPU step time measured by
``cpt_throughput.py`` (``benchmarks/results/cpt-throughput-smollm2-135m.json``). The GPU rows
are arithmetic, not measurements: per-token FLOPs from that benchmark's formula
(``4 N_frozen + 6 N_lora``), an assumed achieved rate and ring all-reduce bandwidths (the
constants below say which)::

    python benchmarks/data_parallel.py --output benchmarks/results/data-parallel.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

RESULTS = Path(__file__).parent / "results"
#: LoRA on every projection of every layer (q, k, v, o, gate, up, down), r = 8, as shipped.
RANK = 8
#: (hidden, intermediate, key/value width, layers, frozen parameters) of each backbone.
BACKBONES = {
    "smollm2-135m": (576, 1536, 192, 30, 106_168_320),
    "llama2-7b": (4096, 11008, 4096, 32, 6_738_415_616),
}
SASREC_HIDDEN = 64  # the projector's input: SASRec's item embedding width
TOKENS_PER_SAMPLE = 280.6  # CPT on Game, measured by cpt_throughput.py (plan_padding)
GLOBAL_BATCH = 128  # train_batch_size and cpt_batch_size, LLaRA's and the paper's
#: Assumptions of the GPU arithmetic: an achieved bf16 rate of 40% of an H100's dense peak
#: (989 TFLOPS), NCCL ring bus bandwidth inside an 8-GPU NVLink node and across two nodes
#: (one 400 Gb/s InfiniBand port per GPU).
GPU_FLOPS = 0.4 * 989e12
BUS_BANDWIDTH = {8: 360e9, 16: 50e9}


def lora_parameters(hidden: int, intermediate: int, kv: int, layers: int, r: int = RANK) -> int:
    """LoRA's A and B on the seven projections: r x (in + out) each."""
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden)]
    shapes += [(hidden, intermediate)] * 2 + [(intermediate, hidden)]
    return layers * sum(r * (a + b) for a, b in shapes)


def projector_parameters(hidden: int, item_width: int = SASREC_HIDDEN) -> int:
    """LLaRA's projector: Linear(item -> d), GELU, Linear(d -> d)."""
    return item_width * hidden + hidden + hidden * hidden + hidden


def _worker(rank: int, world: int, port: int, sizes: dict, repeats: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    timings = {}
    for name, numel in sizes.items():
        buffer = torch.ones(numel)
        dist.all_reduce(buffer)  # warm-up: connections, allocation
        dist.barrier()
        start = time.perf_counter()
        for _ in range(repeats):
            dist.all_reduce(buffer)
        timings[name] = (time.perf_counter() - start) / repeats * 1e3
    if rank == 0:
        out.put(timings)
    dist.destroy_process_group()


def measure(sizes: dict[str, int], world: int, repeats: int) -> dict[str, float]:
    """Milliseconds per all-reduce of each float32 buffer over ``world`` gloo processes."""
    queue = mp.get_context("spawn").SimpleQueue()
    port = 29500 + os.getpid() % 1000
    mp.spawn(_worker, args=(world, port, sizes, repeats, queue), nprocs=world, join=True)
    return queue.get()


def gpu_arithmetic(trainable: int, frozen: int) -> dict[str, dict[str, float]]:
    """Step time at 1, 8 and 16 GPUs with the global batch fixed, and the all-reduce's share."""
    step_flops = GLOBAL_BATCH * TOKENS_PER_SAMPLE * (4 * frozen + 6 * trainable)
    volume = 4 * trainable  # float32 gradients, bytes
    out = {}
    for gpus in (1, 8, 16):
        compute = step_flops / GPU_FLOPS / gpus
        reduce = 0.0 if gpus == 1 else 2 * (gpus - 1) / gpus * volume / BUS_BANDWIDTH[gpus]
        out[str(gpus)] = {
            "compute_s": round(compute, 4),
            "all_reduce_ms": round(reduce * 1e3, 3),
            "all_reduce_share": round(reduce / (compute + reduce), 4),
            "speedup": round(step_flops / GPU_FLOPS / (compute + reduce), 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    smol, llama = BACKBONES["smollm2-135m"], BACKBONES["llama2-7b"]
    throughput = json.loads((RESULTS / "cpt-throughput-smollm2-135m.json").read_text())
    assert lora_parameters(*smol[:4]) == throughput["dims"]["lora"]  # the formula, checked
    sizes = {
        "smollm2-135m LoRA": lora_parameters(*smol[:4]),
        "llama2-7b LoRA (CPT)": lora_parameters(*llama[:4]),
        "llama2-7b LoRA + projector (SFT)": lora_parameters(*llama[:4])
        + projector_parameters(llama[0]),
    }
    measured = measure(sizes, args.processes, args.repeats)
    cpu_tokens_per_s = throughput["shipped"]["real_tokens_per_s"]
    cpu_step_s = 8 * TOKENS_PER_SAMPLE / cpu_tokens_per_s  # the cpu profile's 8-sample step
    report = {
        "processes": args.processes,
        "load_average": os.getloadavg()[0],
        "parameters": sizes,
        "gloo_all_reduce_ms": {k: round(v, 2) for k, v in measured.items()},
        "smollm2_cpu_step_s": round(cpu_step_s, 2),
        "smollm2_all_reduce_share_of_cpu_step": round(
            measured["smollm2-135m LoRA"] / 1e3 / cpu_step_s, 5
        ),
        "gpu_arithmetic": {
            "assumptions": {
                "achieved_flops": GPU_FLOPS,
                "bus_bandwidth_bytes_per_s": BUS_BANDWIDTH,
            },
            "cpt llama2-7b": gpu_arithmetic(sizes["llama2-7b LoRA (CPT)"], llama[4]),
            "sft llama2-7b": gpu_arithmetic(sizes["llama2-7b LoRA + projector (SFT)"], llama[4]),
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
