"""Built-in learning-rate schedules."""

from cprec_recbole.hookspecs import hookimpl
from cprec_recbole.llm.schedulers import (
    constant,
    warmup_cosine,
    warmup_linear,
    warmup_stable_annealing,
    warmup_stable_decay,
)


@hookimpl
def register_schedulers(register):
    register("wsa", warmup_stable_annealing)
    register("wsd", warmup_stable_decay)
    register("cosine", warmup_cosine)
    register("linear", warmup_linear)
    register("constant", constant)
