"""Example plugin: a shorter prompt, in a hybrid and a text-only version.

Fewer template words mean shorter prompts, hence faster training and inference on a small budget;
items are joined by "; " because titles often hold commas. LLaRA and CPRec need both versions
(hybrid prompt, plus the text-only one for the curriculum)::

    python run_recbole_llm.py --plugin=plugins/short_prompt.py --model=LLaRA --dataset=Game \\
        --prompt_template=short --text_template=short_text

Text-only models and CPT take the text version: ``--model=LLaMA2ZeroShot
--prompt_template=short_text``, ``--cpt_template=short_text``. Copy this file and change the
sentence to try another prompt; a changed template retrains the stages that use it.
"""

from __future__ import annotations

from cprec_recbole import hookimpl
from cprec_recbole.llm.prompts import PromptTemplate

SENTENCE = "Bought: {history}. Candidates: {candidates}. The next {noun} is"

SHORT = PromptTemplate(
    text=SENTENCE,
    history_item="{title} [HistoryEmb]",
    candidate_item="{title} [CansEmb]",
    separator="; ",
    placeholders=("[HistoryEmb]", "[CansEmb]"),
)
SHORT_TEXT = PromptTemplate(text=SENTENCE, separator="; ")


@hookimpl
def register_prompt_templates(register):
    register("short", SHORT)
    register("short_text", SHORT_TEXT)
