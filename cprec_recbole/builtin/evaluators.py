"""Built-in LLM evaluators: the paper's iterative generation and likelihood scoring."""

from cprec_recbole.hookspecs import hookimpl


@hookimpl
def register_evaluators(register):
    from cprec_recbole.llm.inference import generate, score

    register("generate", generate)
    register("score", score)
