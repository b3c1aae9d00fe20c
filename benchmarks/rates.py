"""What the speed benchmarks measure against: a model's dimensions, the CPU's matmul rate at its
weight shapes, and the FLOPs its forward calls execute.

A fraction of the matmul rate says how close a workload comes to what this CPU can do at all
(AMX makes bf16 matmuls ~4x faster than AVX-512, so tokens/s alone does not compare machines).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch.nn import functional as F


class Dims(NamedTuple):
    """What the FLOP count needs from the model."""

    frozen: int  # weights of the decoder layers' linear maps (no embeddings, no LoRA)
    lora: int  # trainable LoRA weights
    layers: int
    query: int  # heads x head_dim
    hidden: int
    vocab: int


def model_dims(model) -> Dims:
    cfg = model.config
    frozen = sum(
        p.numel()
        for n, p in model.named_parameters()
        if p.dim() == 2 and ".layers." in n and "lora_" not in n
    )
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return Dims(
        frozen,
        lora,
        cfg.num_hidden_layers,
        cfg.num_attention_heads * head_dim,
        cfg.hidden_size,
        cfg.vocab_size,
    )


def decoder(model) -> torch.nn.Module:
    """The decoder stack of a causal LM, LoRA-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


@contextmanager
def paused(pid: int):
    """SIGSTOP ``pid`` (a job sharing the CPU) for the duration, SIGCONT after; 0: nothing."""
    if not pid:
        yield
        return
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def matmul_rates(model, rows: int, dtype: torch.dtype, repeats: int, pid: int) -> dict:
    """GFLOP/s of ``F.linear`` on [rows, in] inputs with every distinct decoder weight shape;
    ``layer`` = the mix of one decoder layer (total FLOPs / total seconds)."""
    layer = decoder(model).layers[0]
    shapes = [m.weight.shape for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    seconds = {}
    with paused(pid):
        for out_f, in_f in dict.fromkeys(tuple(x) for x in shapes):
            x = torch.randn(rows, in_f, dtype=dtype)
            w = torch.randn(out_f, in_f, dtype=dtype)
            for _ in range(3):
                F.linear(x, w)
            start = time.perf_counter()
            for _ in range(repeats):
                F.linear(x, w)
            seconds[(out_f, in_f)] = (time.perf_counter() - start) / repeats
    per_shape = {
        f"{rows}x{i}x{o}": round(2 * rows * i * o / t / 1e9, 1) for (o, i), t in seconds.items()
    }
    flops = sum(2 * rows * i * o for o, i in map(tuple, shapes))
    layer_s = sum(seconds[tuple(x)] for x in shapes)
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "per_shape": per_shape,
        "layer": round(flops / layer_s / 1e9, 1),
    }


class ForwardCount:
    """Executed FLOPs and tokens of the forward calls made while counting: ``2 N_frozen`` per
    token, ``4 L d_q`` per (query, key) pair of attention (scores and values over the whole
    masked square, as a masked kernel computes it) and ``2 d V`` per kept LM-head position."""

    def __init__(self) -> None:
        self.matmul, self.attention, self.tokens, self.calls = 0, 0, 0, 0

    @property
    def flops(self) -> int:
        return self.matmul + self.attention


def _rows_and_width(args: tuple, kwargs: dict) -> tuple[int, int]:
    x = kwargs.get("inputs_embeds")
    if x is None:
        x = kwargs.get("input_ids", args[0] if args else None)
    return int(x.shape[0]), int(x.shape[1])


@contextmanager
def counting_forwards(model) -> Iterator[ForwardCount]:
    """Count the forward FLOPs of ``model`` (a causal LM) from the shapes its decoder and LM
    head see, with hooks: the code under measurement runs unchanged."""
    dims, count = model_dims(model), ForwardCount()
    stack = decoder(model)
    head = model.get_output_embeddings()

    def on_decoder(module, args, kwargs) -> None:
        rows, width = _rows_and_width(args, kwargs)
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None else 0
        count.matmul += 2 * dims.frozen * rows * width
        count.attention += 4 * dims.layers * dims.query * rows * width * (past + width)
        count.tokens += rows * width
        count.calls += 1

    def on_head(module, args) -> None:
        kept = args[0].shape[:-1].numel()
        count.matmul += 2 * dims.hidden * dims.vocab * kept

    hooks = [
        stack.register_forward_pre_hook(on_decoder, with_kwargs=True),
        head.register_forward_pre_hook(on_head),
    ]
    try:
        yield count
    finally:
        for hook in hooks:
            hook.remove()
