"""The LLM recommenders."""

from cprec_recbole.hookspecs import hookimpl


@hookimpl
def register_models(register):
    from cprec_recbole.models.llama2_zero_shot import LLaMA2ZeroShot
    from cprec_recbole.models.llara import LLaRA

    register("LLaMA2ZeroShot", LLaMA2ZeroShot)
    register("LLaRA", LLaRA)
