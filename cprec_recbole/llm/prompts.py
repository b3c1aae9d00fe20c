"""Prompt templates are data: a sentence with named fields plus how one item renders.

A plugin adds a template in a few lines::

    from cprec_recbole.hookspecs import hookimpl
    from cprec_recbole.llm.prompts import PromptTemplate

    @hookimpl
    def register_prompt_templates(register):
        register("watched", PromptTemplate(
            text="The user watched {history}. Which {noun} next, among {candidates}? The answer is",
            history_item="{title} [HistoryEmb]",
            candidate_item="{title} [CansEmb]",
            placeholders=("[HistoryEmb]", "[CansEmb]"),
        ))

Then select it with ``prompt_template: watched``. Every template's prompt ends right before the
answer (conventionally with "The answer is", no trailing space); the answer is always
``answer_text(title)``, so training, generation and scoring see the same token boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptTemplate:
    """How a prompt renders.

    ``placeholders`` are special tokens whose input embedding is replaced by a projected
    collaborative embedding (one per occurrence, matched in order to the history items, then the
    candidate items). ``extra_tokens`` are special tokens the tokenizer must know but that keep
    their own learned embedding (LLaRA's text-only ``[PH]``). ``noun``, when set, overrides the
    dataset's noun (the unified CPT template always says "item").
    """

    text: str
    history_item: str = "{title}"
    candidate_item: str = "{title}"
    separator: str = ", "
    placeholders: tuple[str, ...] = ()
    extra_tokens: tuple[str, ...] = ()
    noun: str | None = None

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """Every token this template needs added to the tokenizer."""
        return tuple(dict.fromkeys(self.placeholders + self.extra_tokens))

    def slots_per_item(self, item_format: str) -> int:
        """How many placeholder occurrences one rendered item carries."""
        return sum(item_format.count(p) for p in self.placeholders)


def render(
    template: PromptTemplate,
    history_titles: Sequence[str],
    candidate_titles: Sequence[str],
    noun: str,
) -> str:
    """The prompt without its answer."""
    history = template.separator.join(template.history_item.format(title=t) for t in history_titles)
    candidates = template.separator.join(
        template.candidate_item.format(title=t) for t in candidate_titles
    )
    return template.text.format(history=history, candidates=candidates, noun=template.noun or noun)


def answer_text(title: str) -> str:
    """The answer after the prompt: a space, the title, a newline (generation stops there)."""
    return f" {title}\n"
