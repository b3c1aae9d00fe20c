"""LLaMA2ZeroShot: the bare backbone (Touvron et al., 2023) on the text-only prompt, no training."""

from cprec_recbole.llm.pipeline import LLMRecommender


class LLaMA2ZeroShot(LLMRecommender):
    pipeline = ("data", "eval")
