"""Example plugin: a model of its own, LLaRA fine-tuned on text-only prompts (no SASRec).

It declares its pipeline and inherits the rest: LLaMA2ZeroShot's defaults (the text-only
``llara_text`` prompt) and LLaRA's SFT. Against LLaRA on the same candidates it shows what the
SASRec embeddings of the hybrid prompt add::

    python run_recbole_llm.py --plugin=plugins/text_llara.py --model=TextLLaRA --dataset=Game
"""

from __future__ import annotations

from cprec_recbole import hookimpl
from cprec_recbole.models.llama2_zero_shot import LLaMA2ZeroShot


class TextLLaRA(LLaMA2ZeroShot):
    """LoRA fine-tuned on text-only prompts, then ranked like every LLM model."""

    pipeline = ("data", "sft", "eval")


@hookimpl
def register_models(register):
    register("TextLLaRA", TextLLaRA)
