"""The LLM recommenders."""

from cprec_recbole.hookspecs import hookimpl


@hookimpl
def register_models(register):
    from cprec_recbole.models.chatrec import ChatRec
    from cprec_recbole.models.cprec import CPRec
    from cprec_recbole.models.cpt_llara import CPTLLaRA
    from cprec_recbole.models.llama2_zero_shot import LLaMA2ZeroShot
    from cprec_recbole.models.llara import LLaRA

    register("LLaMA2ZeroShot", LLaMA2ZeroShot)
    register("LLaRA", LLaRA)
    register("CPTLLaRA", CPTLLaRA)
    register("CPRec", CPRec)
    register("ChatRec", ChatRec)
