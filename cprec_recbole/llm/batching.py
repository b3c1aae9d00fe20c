"""Samples -> left-padded token batches with answer-only labels and item-embedding slots.

Prompt and answer are tokenized separately and their ids concatenated, so the prefix the model
is trained on is exactly the prefix it generates or scores from. The answer is tokenized as it
continues a prompt (:func:`answer_ids`), so the ids equal those of prompt and answer tokenized as
one text for SentencePiece-style tokenizers (LLaMA's) as well as byte-level BPE ones. Rows are LEFT padded: the last
position of every row is the prompt's last token, which generation and scoring both need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from cprec_recbole.data.titles import K, distinct_titles
from cprec_recbole.llm.prompts import PromptTemplate, answer_text, render

IGNORE_INDEX = -100


@dataclass
class LLMSample:
    """One prompt: raw item ids; ``target`` is None where the answer is unknown or unwanted."""

    user_id: str
    history: list[str]
    candidates: list[str]
    target: str | None = None


@dataclass
class RenderContext:
    """How prompts are rendered and what is injected into them: what training's losses and
    evaluation's rankings both read besides the model."""

    template: PromptTemplate
    titles: Mapping[str, str]
    item_index: Mapping[str, int]
    noun: str
    config: Mapping[str, Any] = field(default_factory=dict)
    item_embeddings: Tensor | None = None
    projector: nn.Module | None = None


@dataclass
class EncodedBatch:
    """Token ids ``[B, T]`` and the ``K`` placeholder slots (batch row, position, item row)."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor | None
    slot_rows: Tensor
    slot_cols: Tensor
    slot_items: Tensor

    def to(self, device: torch.device | str) -> EncodedBatch:
        moved = {
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
            for f in fields(self)
        }
        return EncodedBatch(**moved)

    @property
    def position_ids(self) -> Tensor:
        return position_ids(self.attention_mask)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that start at 0 on each row's first real token (left padding), as HF generate."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pad_id(tokenizer) -> int:
    """The id used for padding; tokenizers without a pad token fall back to EOS."""
    pid = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pid is None else pid


def shorten_titles(tokenizer, titles: Mapping[K, str], max_tokens: int | None) -> dict[K, str]:
    """Cut each title to its first ``max_tokens`` tokens."""
    if max_tokens is None:
        return dict(titles)
    keys = list(titles)
    ids = tokenizer([titles[k] for k in keys], add_special_tokens=False)["input_ids"]
    text = tokenizer.batch_decode([i[:max_tokens] for i in ids], skip_special_tokens=True)
    return {k: t.strip() for k, t in zip(keys, text, strict=True)}


def prompt_titles(tokenizer, titles: Mapping[K, str], config: Mapping) -> dict[K, str]:
    """THE title of each item in prompts and answers: cut to ``max_title_tokens``, then
    numbered where items share one (``distinct_titles``)."""
    short = shorten_titles(tokenizer, titles, config.get("max_title_tokens"))
    return distinct_titles(short) if config.get("distinct_titles") else short


#: A word the answers are tokenized after (prompts end "... The answer is"), then cut off.
ANSWER_ANCHOR = "is"


def answer_ids(tokenizer, answers: Sequence[str]) -> list[list[int]]:
    """Token ids of ``answers`` as they follow a prompt. Tokenized alone, " Title" gets a
    SentencePiece tokenizer's dummy prefix ("▁" prepended, then the space's own "▁": LLaMA-2
    gives a stray "▁" token first); after an anchor word that prefix lands on the anchor."""
    anchor = tokenizer(ANSWER_ANCHOR, add_special_tokens=False)["input_ids"]
    joint = tokenizer([ANSWER_ANCHOR + a for a in answers], add_special_tokens=False)["input_ids"]
    for answer, ids in zip(answers, joint, strict=True):
        if ids[: len(anchor)] != anchor:
            raise ValueError(
                f"the tokenizer merges the answer {answer!r} into the word before it "
                f"({ANSWER_ANCHOR!r}): its ids cannot be cut from the prompt's"
            )
    return [ids[len(anchor) :] for ids in joint]


def template_token_ids(tokenizer, tokens: Sequence[str]) -> list[int]:
    """Ids of special tokens that must exist as single tokens in the vocabulary."""
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    missing = [
        t for t, i in zip(tokens, ids, strict=True) if i is None or i == tokenizer.unk_token_id
    ]
    if missing:
        raise ValueError(f"tokens {missing} are not in the tokenizer; add them as special tokens")
    return ids


def _choose(hybrid: Tensor | bool, n: int) -> list[bool]:
    if isinstance(hybrid, bool):
        return [hybrid] * n
    return [bool(h) for h in torch.as_tensor(hybrid).tolist()]


def _slot_items(
    template: PromptTemplate, sample: LLMSample, item_index: Mapping[str, int]
) -> list[int]:
    """Item rows in the order their placeholders appear: history items, then candidates."""
    per_history = template.slots_per_item(template.history_item)
    per_candidate = template.slots_per_item(template.candidate_item)
    rows = [item_index[i] for i in sample.history for _ in range(per_history)]
    return rows + [item_index[i] for i in sample.candidates for _ in range(per_candidate)]


def _prompt_ids(
    tokenizer,
    templates: Sequence[PromptTemplate],
    samples: Sequence[LLMSample],
    titles: Mapping[str, str],
    noun: str,
) -> list[list[int]]:
    prompts = [
        render(t, [titles[i] for i in s.history], [titles[i] for i in s.candidates], noun)
        for t, s in zip(templates, samples, strict=True)
    ]
    return tokenizer(prompts, add_special_tokens=True)["input_ids"]


def prompt_lengths(
    tokenizer,
    template: PromptTemplate,
    samples: Sequence[LLMSample],
    titles: Mapping[str, str],
    noun: str,
) -> list[int]:
    """Tokens in each sample's prompt (without answer), as ``encode_batch`` would make it."""
    ids = _prompt_ids(tokenizer, [template] * len(samples), samples, titles, noun)
    return [len(i) for i in ids]


def encode_batch(
    tokenizer,
    template: PromptTemplate,
    samples: Sequence[LLMSample],
    titles: Mapping[str, str],
    item_index: Mapping[str, int],
    noun: str,
    with_answer: bool,
    hybrid: Tensor | bool = True,
    text_template: PromptTemplate | None = None,
) -> EncodedBatch:
    """Render, tokenize and left-pad ``samples``.

    ``hybrid[b]`` False renders sample b with ``text_template`` (LLaRA's curriculum); labels are
    -100 everywhere except the answer tokens (None without answers).
    """
    chosen = _choose(hybrid, len(samples))
    if not all(chosen) and text_template is None:
        raise ValueError("hybrid=False samples need a text_template")
    templates = [template if h else text_template for h in chosen]
    prompt_ids = _prompt_ids(tokenizer, templates, samples, titles, noun)
    if with_answer:
        if any(s.target is None for s in samples):
            raise ValueError("with_answer=True needs every sample's target")
        answers = answer_ids(tokenizer, [answer_text(titles[s.target]) for s in samples])
    else:
        answers = [[] for _ in samples]
    ids = [torch.tensor(p + a, dtype=torch.long) for p, a in zip(prompt_ids, answers, strict=True)]
    labels = [
        torch.tensor([IGNORE_INDEX] * len(p) + a, dtype=torch.long)
        for p, a in zip(prompt_ids, answers, strict=True)
    ]
    input_ids = pad_sequence(
        ids, batch_first=True, padding_value=pad_id(tokenizer), padding_side="left"
    )
    mask = pad_sequence(
        [torch.ones(len(i), dtype=torch.long) for i in ids], batch_first=True, padding_side="left"
    )
    label_tensor = None
    if with_answer:
        label_tensor = pad_sequence(
            labels, batch_first=True, padding_value=IGNORE_INDEX, padding_side="left"
        )
    rows, cols, items = _slots(tokenizer, templates, samples, item_index, input_ids, mask)
    return EncodedBatch(input_ids, mask, label_tensor, rows, cols, items)


def _slots(
    tokenizer,
    templates: Sequence[PromptTemplate],
    samples: Sequence[LLMSample],
    item_index: Mapping[str, int],
    input_ids: Tensor,
    mask: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Every placeholder occurrence (row-major, so in prompt order) paired with its item row."""
    placeholders = sorted({p for t in templates for p in t.placeholders})
    empty = torch.zeros(0, dtype=torch.long)
    if not placeholders:
        return empty, empty.clone(), empty.clone()
    ph_ids = torch.tensor(template_token_ids(tokenizer, placeholders))
    found = torch.isin(input_ids, ph_ids) & mask.bool()
    rows, cols = found.nonzero(as_tuple=True)
    per_sample = [_slot_items(t, s, item_index) for t, s in zip(templates, samples, strict=True)]
    counts = torch.bincount(rows, minlength=len(samples)).tolist()
    expected = [len(p) for p in per_sample]
    if counts != expected:
        bad = next(b for b, (c, e) in enumerate(zip(counts, expected, strict=True)) if c != e)
        raise ValueError(
            f"sample {bad} (user {samples[bad].user_id}) has {counts[bad]} placeholder tokens "
            f"but {expected[bad]} items; does a title contain a placeholder token?"
        )
    items = torch.tensor([i for p in per_sample for i in p], dtype=torch.long)
    return rows, cols, items
