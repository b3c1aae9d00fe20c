"""Built-in learning-rate schedules."""

from cprec_recbole.hookspecs import hookimpl
from cprec_recbole.llm.schedulers import constant, warmup_cosine


@hookimpl
def register_schedulers(register):
    register("cosine", warmup_cosine)
    register("constant", constant)
