"""LLaRA: Liao et al., "LLaRA: Large Language-Recommendation Assistant", SIGIR 2024.

Hybrid prompts (title + projected SASRec embedding), curriculum from text-only to hybrid prompts,
LoRA fine-tuning. Defaults in ``properties/model/LLaRA.yaml``.
"""

from cprec_recbole.llm.pipeline import LLMRecommender


class LLaRA(LLMRecommender):
    pipeline = ("data", "sasrec", "sft", "eval")
