"""Example plugin: a step-decay learning-rate schedule (warm-up, then the rate drops in steps).

After the run's warm-up (LLaRA's linear ramp ``(s + 1) / warmup``) the rate is the peak times
``decay_gamma ** ((s - warmup) // period)``, where ``period`` is ``decay_period`` of the total
steps (at least 1). ``@reads`` declares both keys with their defaults: the config check then
accepts them, and they join the training stage's key, so changing one retrains::

    python run_recbole_llm.py --plugin=plugins/step_decay.py --model=LLaRA --dataset=Game \\
        --lr_scheduler=step_decay --decay_gamma=0.5 --decay_period=0.25

For CPT use ``--cpt_scheduler=step_decay``; its warm-up comes from the corpus phases.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from cprec_recbole import hookimpl
from cprec_recbole.llm.schedulers import reads, schedule_settings

NAME = "step_decay"


@reads(decay_gamma=0.5, decay_period=0.25)
def step_decay(optimizer: Optimizer, phases: Mapping[str, int], config: Mapping) -> LambdaLR:
    """Warm-up to the optimizer's lr, then multiply it by ``decay_gamma`` every period."""
    settings = schedule_settings(step_decay, config)
    gamma, period_ratio = settings["decay_gamma"], settings["decay_period"]
    if not 0.0 < gamma <= 1.0 or not 0.0 < period_ratio <= 1.0:
        raise ValueError(
            f"{NAME} needs decay_gamma and decay_period in (0, 1]; got {gamma}, {period_ratio}"
        )
    total, warmup = int(phases["total"]), int(phases.get("warmup", 0))
    period = max(1, round(period_ratio * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return gamma ** ((step - warmup) // period)

    return LambdaLR(optimizer, factor)


@hookimpl
def register_schedulers(register):
    register(NAME, step_decay)
