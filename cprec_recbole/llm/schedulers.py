"""Learning-rate schedules as ``LambdaLR`` multipliers of the optimizer's base rate, by step.

A schedule is a factory ``factory(optimizer, phases, config) -> LambdaLR`` stepped once per
optimizer step; the step ``s`` it sees is the 0-based optimizer step. ``phases`` maps phase names
to their end step (exclusive), always with ``total``; a schedule reads the boundaries it needs:

- ``wsa``: CPRec's Warmup-Stable-Annealing (paper eq. 2), ``warmup`` and ``stable`` from the corpus
  phases, absolute rates ``eta_l`` -> ``eta_h`` -> cosine back to ``eta_l``;
- ``wsd``: MiniCPM's Warmup-Stable-Decay, the decay being the last ``decay_ratio`` of the steps;
- ``cosine``: warm-up then cosine (LLaRA's); ``linear``: warm-up then linear; ``constant``.

Each factory declares the config keys it reads, with their defaults (``@reads``), so a stage hash
can include them (``schedule_keys``). Register more with ``register_schedulers``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from cprec_recbole.io import write_atomic

Factory = Callable[[Optimizer, Mapping[str, int], Mapping], LambdaLR]


def reads(**defaults: float) -> Callable[[Factory], Factory]:
    """Mark the config keys a factory reads, and their defaults, so a stage hash can include them."""

    def mark(factory: Factory) -> Factory:
        factory.config_keys = tuple(defaults)
        factory.config_defaults = dict(defaults)
        return factory

    return mark


def schedule_keys(factory: Factory) -> tuple[str, ...]:
    """The config keys ``factory`` reads; ``()`` for a plugin factory that declares none."""
    return tuple(getattr(factory, "config_keys", ()))


def schedule_settings(factory: Factory, config: Mapping) -> dict[str, float]:
    """The values ``factory`` uses: each declared key from ``config``, else its default."""
    defaults = getattr(factory, "config_defaults", {})
    return {k: float(d if config.get(k) is None else config[k]) for k, d in defaults.items()}


def _phase(phases: Mapping[str, int], name: str, schedule: str) -> int:
    if name not in phases:
        raise ValueError(
            f"the {schedule!r} schedule needs phases[{name!r}] (an end step); "
            f"got phases {dict(phases)}"
        )
    return int(phases[name])


def _check_order(schedule: str, **bounds: int) -> None:
    """Phase ends must be ``0 <= first <= ... <= total``, else the curve would be nonsense."""
    values = list(bounds.values())
    if values[0] < 0 or any(a > b for a, b in pairwise(values)):
        raise ValueError(
            f"the {schedule!r} schedule needs 0 <= {' <= '.join(bounds)}; got {bounds}"
        )


def _check_ratio(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1]; got {value}")


def wsa_rate(step: int, warmup: int, stable: int, total: int, eta_l: float, eta_h: float) -> float:
    """Paper eq. 2 at ``step``: ``eta_l`` -> ``eta_h`` by ``warmup``, held to ``stable``, then
    cosine (eq. 3) back to ``eta_l`` at ``total``; steps past ``total`` stay at ``eta_l``."""
    if step <= warmup:  # warmup == 0 means step 0 is already at the peak
        return eta_h if warmup == 0 else eta_l + step / warmup * (eta_h - eta_l)
    if step <= stable or stable >= total:  # stable == total: no annealing
        return eta_h
    progress = min(1.0, (step - stable) / (total - stable))
    return eta_l + 0.5 * (1 + math.cos(math.pi * progress)) * (eta_h - eta_l)


@reads(eta_l=5e-6, eta_h=5e-4)
def warmup_stable_annealing(
    optimizer: Optimizer, phases: Mapping[str, int], config: Mapping
) -> LambdaLR:
    """CPRec's WSA over the corpus phases ``warmup``, ``stable``, ``total`` (W, S, A).

    LambdaLR multiplies the optimizer's base lr, so the multiplier is ``WSA(s) / eta_h``: the
    caller sets the optimizer's lr to ``eta_h`` (CPT does) to get the paper's absolute rates; any
    other base lr scales the whole curve. ``stable == total`` means no annealing.
    """
    s = schedule_settings(warmup_stable_annealing, config)
    eta_l, eta_h = s["eta_l"], s["eta_h"]
    if not 0.0 <= eta_l <= eta_h or eta_h <= 0.0:
        raise ValueError(f"wsa needs 0 <= eta_l <= eta_h and eta_h > 0; got {eta_l}, {eta_h}")
    total = _phase(phases, "total", "wsa")
    warmup, stable = _phase(phases, "warmup", "wsa"), _phase(phases, "stable", "wsa")
    _check_order("wsa", warmup=warmup, stable=stable, total=total)
    return LambdaLR(
        optimizer, lambda step: wsa_rate(step, warmup, stable, total, eta_l, eta_h) / eta_h
    )


@reads(decay_ratio=0.1, min_lr_ratio=0.01)
def warmup_stable_decay(
    optimizer: Optimizer, phases: Mapping[str, int], config: Mapping
) -> LambdaLR:
    """MiniCPM's WSD: warm-up, peak, then cosine to ``min_lr_ratio`` over the last ``decay_ratio``.

    The decay starts at a fraction of the steps, not at a data phase. The warm-up rises linearly
    from ``min_lr_ratio`` of the peak (as WSA's from ``eta_l``), so with ``min_lr_ratio = eta_l /
    eta_h`` and the same boundaries WSD and WSA draw the same curve.
    """
    s = schedule_settings(warmup_stable_decay, config)
    floor, decay_ratio = s["min_lr_ratio"], s["decay_ratio"]
    _check_ratio("min_lr_ratio", floor)
    _check_ratio("decay_ratio", decay_ratio)
    total, warmup = _phase(phases, "total", "wsd"), int(phases.get("warmup", 0))
    _check_order("wsd", warmup=warmup, total=total)
    decay_start = max(warmup, total - round(decay_ratio * total))
    return LambdaLR(optimizer, lambda step: wsa_rate(step, warmup, decay_start, total, floor, 1.0))


def _warmup_factor(step: int, warmup: int) -> float:
    """LLaRA's ramp ``(s + 1) / W``: the first step already moves, the last reaches the peak."""
    return (step + 1) / warmup


@reads(min_lr_ratio=0.0)
def warmup_cosine(optimizer: Optimizer, phases: Mapping[str, int], config: Mapping) -> LambdaLR:
    """Linear warm-up to the peak, then cosine down to ``min_lr_ratio`` of it (LLaRA's)."""
    total, warmup = max(int(phases["total"]), 1), int(phases.get("warmup", 0))
    floor = schedule_settings(warmup_cosine, config)["min_lr_ratio"]

    def factor(step: int) -> float:
        if step < warmup:
            return _warmup_factor(step, warmup)
        progress = min(1.0, (step - warmup) / max(total - warmup, 1))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


@reads(min_lr_ratio=0.0)
def warmup_linear(optimizer: Optimizer, phases: Mapping[str, int], config: Mapping) -> LambdaLR:
    """Linear warm-up to the peak (as ``cosine``), then linear down to ``min_lr_ratio`` at total."""
    total, warmup = max(int(phases["total"]), 1), int(phases.get("warmup", 0))
    floor = schedule_settings(warmup_linear, config)["min_lr_ratio"]

    def factor(step: int) -> float:
        if step < warmup:
            return _warmup_factor(step, warmup)
        progress = min(1.0, (step - warmup) / max(total - warmup, 1))
        return 1 - (1 - floor) * progress

    return LambdaLR(optimizer, factor)


@reads()
def constant(optimizer: Optimizer, phases: Mapping[str, int], config: Mapping) -> LambdaLR:
    """The optimizer's base lr at every step."""
    return LambdaLR(optimizer, lambda step: 1.0)


def learning_rates(
    factory: Factory, phases: Mapping[str, int], config: Mapping, base_lr: float
) -> np.ndarray:
    """The rate at every step ``0 .. total - 1``, from a throwaway optimizer (no model needed)."""
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=base_lr)
    scheduler = factory(optimizer, phases, config)
    rates = np.empty(int(phases["total"]), dtype=np.float64)
    with warnings.catch_warnings():  # no gradients, so the optimizer step is a no-op
        warnings.simplefilter("ignore")
        for step in range(len(rates)):
            rates[step] = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
    return rates


def plot_schedule(
    path: str | Path,
    rates: np.ndarray,
    samples_per_step: float | np.ndarray,
    phase_samples: Mapping[str, tuple[float, float]],
    title: str,
) -> Path:
    """Write a PNG of the rate against training samples, each phase shaded and labelled.

    ``samples_per_step`` is one number, or each step's own (a phase's last step may be short)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # plotting is optional
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    per_step = np.broadcast_to(np.asarray(samples_per_step, dtype=float), (len(rates),))
    samples = np.concatenate([[0.0], np.cumsum(per_step)[:-1]])
    ax.plot(samples, rates, color="black", linewidth=1.5)
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for i, (name, (start, end)) in enumerate(phase_samples.items()):
        ax.axvspan(start, end, color=colours[i % len(colours)], alpha=0.15, linewidth=0)
        ax.text((start + end) / 2, 1.01, name, transform=ax.get_xaxis_transform(), ha="center")
    ax.set(xlabel="training samples", ylabel="learning rate")
    ax.set_title(title, pad=18)  # room for the phase labels above the axes
    ax.yaxis.set_major_formatter("{x:.1e}")  # no offset text, which would cover a phase label
    ax.set_xlim(0, max(float(per_step.sum()), 1))
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
