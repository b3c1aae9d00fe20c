"""The two ways an LLM ranks candidates: iterative generation (the paper's) and likelihood scoring.

``generate`` follows LLaRA: greedy decoding, the first output line must name exactly one
candidate; for HR@k the picked candidate is removed and the prompt re-rendered, ``eval_rounds``
times. ``score`` ranks every candidate by the likelihood of its answer after the prompt; the
prompt and all candidates run in one forward. ``score_rule`` says which likelihood: ``mean``, the
mean log-likelihood of the answer's tokens (or of its first ``score_max_tokens``), or
``distinct_prefix``, the log-probability of the answer's shortest prefix that no other candidate's
answer starts with, i.e. of the model starting to name this candidate and no other (usually one
token, so scoring costs little more than the prompt). Both return the rank of the positive per
user, so ``evaluation.evaluate_ranks`` reads either.

Config keys (from ``ctx.config``): ``eval_batch_users`` (users per model call, default 4; users
are batched by prompt length), ``max_new_tokens`` (64), ``eval_rounds`` (5), ``score_rule``
(mean), ``score_max_tokens`` (null: whole answers), ``show_progress`` (True).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from cprec_recbole import distributed
from cprec_recbole.errors import ConfigError
from cprec_recbole.evaluation import INVALID, UNRANKED, evaluate_ranks, ranks_from_scores
from cprec_recbole.llm.batching import (
    LLMSample,
    RenderContext,
    encode_batch,
    pad_id,
    prompt_lengths,
)
from cprec_recbole.llm.names import EVAL_ITEM_EMBEDDINGS
from cprec_recbole.llm.projector import embed_batch, model_device
from cprec_recbole.llm.prompts import PromptTemplate
from cprec_recbole.llm.scoring import (
    GENERATE_REFUSED,
    candidate_scores,
    score_rule,
    uses_item_tokens,
)

if TYPE_CHECKING:  # the LLM models import this module, and loading plugins loads them
    from transformers import StoppingCriteria


@dataclass
class EvalOutput:
    """Per user: rank of the positive (``INVALID`` = -1), round-0 validity and raw answer, and
    the candidates in the order the model ranks them (generation: picked round after round;
    score: all, by score), whose first the diagnostics compare across models."""

    ranks: np.ndarray
    valid: np.ndarray
    answers: list[str]
    picks: list[list[str]] = field(default_factory=list)


Evaluator = Callable[[nn.Module, Any, Sequence[LLMSample], RenderContext], EvalOutput]


def derangement(n: int, seed: int) -> Tensor:
    """A seeded permutation of ``range(n)`` without fixed points, uniform over all such (plain
    permutations redrawn until one has none: ~e draws), so no item keeps its own row."""
    if n < 2:
        raise ValueError(f"no permutation of {n} item(s) moves every item")
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator)
        if (order != torch.arange(n)).all():
            return order


def item_embedding_context(
    ctx: RenderContext, mode: str, text_template: PromptTemplate | None, seed: int
) -> RenderContext:
    """The context for ``eval_item_embeddings``: ``trained`` as is; ``permuted``, each item's
    embedding row swapped for another item's (``derangement``; row 0, padding, kept); ``none``,
    the text-only prompt of the curriculum, and no item embeddings (nor item-token logits).
    What the collaborative embeddings add to a model's ranking is the drop from ``trained``."""
    if mode not in EVAL_ITEM_EMBEDDINGS:
        raise ConfigError(
            f"eval_item_embeddings: {mode!r} is not one of {', '.join(EVAL_ITEM_EMBEDDINGS)}"
        )
    if mode == "trained":
        return ctx
    if ctx.item_embeddings is None:
        raise ConfigError(
            f"eval_item_embeddings={mode}: this model's prompts read no item embeddings"
        )
    if mode == "permuted":
        order = derangement(ctx.item_embeddings.shape[0] - 1, seed) + 1
        rows = torch.cat([torch.zeros(1, dtype=torch.long), order])
        return replace(
            ctx, item_embeddings=ctx.item_embeddings[rows.to(ctx.item_embeddings.device)]
        )
    if text_template is None:
        raise ConfigError("eval_item_embeddings=none needs a text_template (the text-only prompt)")
    return replace(ctx, template=text_template, item_embeddings=None)


def output_metrics(out: EvalOutput, samples: Sequence[LLMSample], edges: Sequence[int]) -> dict:
    """The shared metrics of an evaluator's output, bucketed by each sample's history length."""
    lengths = np.array([len(s.history) for s in samples])
    return evaluate_ranks(out.ranks, lengths, list(edges), out.valid)


def parse_answer(text: str, candidate_titles: Sequence[str]) -> int | None:
    """LLaRA's rule: the first line, lower-cased, must contain exactly one candidate title."""
    line = text.strip().split("\n", 1)[0].lower()
    hits = [k for k, title in enumerate(candidate_titles) if title.lower() in line]
    return hits[0] if len(hits) == 1 else None


def length_batches(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Sample indices in batches of ``size``, shortest prompts first: with rows left padded to
    the longest, random batches of 4 Game test users carry ~10% padding, sorted ones ~0.2%."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + size] for start in range(0, len(order), size)]


def _batches(tokenizer, samples: Sequence[LLMSample], ctx: RenderContext) -> list[list[int]]:
    lengths = prompt_lengths(tokenizer, ctx.template, samples, ctx.titles, ctx.noun)
    return length_batches(lengths, int(ctx.config["eval_batch_users"]))


def evaluate_sharded(
    evaluator: Evaluator, model: nn.Module, tokenizer, samples: Sequence[LLMSample], ctx
) -> EvalOutput:
    """``evaluator`` over N data-parallel ranks: the length-sorted batches one process would
    make are dealt round-robin, so every model call is one a single process makes and ranks are
    identical; the ranks' outputs are gathered into one, in ``samples``' order, on every rank."""
    if distributed.world_size() == 1:
        return evaluator(model, tokenizer, samples, ctx)
    mine = [u for batch in distributed.my_share(_batches(tokenizer, samples, ctx)) for u in batch]
    out = evaluator(model, tokenizer, [samples[u] for u in mine], ctx)
    return merge_outputs(distributed.gather((mine, out)), len(samples))


def merge_outputs(parts: Sequence[tuple[list[int], EvalOutput]], n: int) -> EvalOutput:
    """One output from per-shard outputs (each with the sample indices it holds)."""
    ranks, valid = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    answers, picks = [""] * n, [[] for _ in range(n)]
    for indices, out in parts:
        ranks[indices], valid[indices] = out.ranks, out.valid
        for j, u in enumerate(indices):
            answers[u] = out.answers[j]
            picks[u] = out.picks[j] if out.picks else []
    keep_picks = any(out.picks for _, out in parts)
    return EvalOutput(ranks, valid, answers, picks if keep_picks else [])


def _progress(config: Mapping[str, Any], total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="user", disable=not config["show_progress"])


def _encode(tokenizer, samples: Sequence[LLMSample], ctx: RenderContext, device: torch.device):
    batch = encode_batch(
        tokenizer, ctx.template, samples, ctx.titles, ctx.item_index, ctx.noun, with_answer=False
    )
    return batch.to(device)


# ---------------------------------------------------------------- generation


def newline_token_ids(tokenizer) -> Tensor:
    """Every token whose text contains a newline (``Ċ``, ``.Ċ``, ``<0x0A>``...)."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return torch.tensor([i for i, t in enumerate(texts) if "\n" in t], dtype=torch.long)


@torch.no_grad()
def generate_texts(
    model: nn.Module,
    tokenizer,
    samples: Sequence[LLMSample],
    ctx: RenderContext,
    stop: StoppingCriteria | None = None,
) -> list[str]:
    """Greedy continuations of the samples' prompts (item embeddings injected)."""
    from transformers import StoppingCriteriaList

    device = model_device(model)
    batch = _encode(tokenizer, samples, ctx, device)
    embeds = embed_batch(model, batch, ctx.item_embeddings, ctx.projector)
    out = model.generate(
        inputs_embeds=embeds,
        attention_mask=batch.attention_mask,
        max_new_tokens=int(ctx.config["max_new_tokens"]),
        do_sample=False,
        stopping_criteria=StoppingCriteriaList([stop]) if stop is not None else None,
        pad_token_id=pad_id(tokenizer),
    )
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def iterative_ranks(
    samples: Sequence[LLMSample],
    ctx: RenderContext,
    answer: Callable[[Sequence[LLMSample]], list[str]],
    batches: Sequence[Sequence[int]],
) -> EvalOutput:
    """Pick, remove, re-render, ``eval_rounds`` times; ``answer`` maps prompts to model text;
    ``batches`` says which samples share a model call.

    Rank = the round where the positive was picked; ``INVALID`` if round 0 named no single
    candidate; ``UNRANKED`` if never picked (a later invalid answer also ends the user), so
    HR@k for k above ``eval_rounds`` counts only what was actually ranked.
    """
    rounds = int(ctx.config["eval_rounds"])
    n = len(samples)
    ranks = np.full(n, UNRANKED, dtype=np.int64)
    valid = np.zeros(n, dtype=bool)
    answers = [""] * n
    picks: list[list[str]] = [[] for _ in range(n)]
    progress = _progress(ctx.config, n, "generate")
    for chunk in batches:
        remaining = {u: list(samples[u].candidates) for u in chunk}
        active = list(chunk)
        for r in range(rounds):
            if not active:
                break
            texts = answer([replace(samples[u], candidates=remaining[u]) for u in active])
            still = []
            for u, text in zip(active, texts, strict=True):
                k = parse_answer(text, [ctx.titles[c] for c in remaining[u]])
                if r == 0:
                    answers[u], valid[u] = text, k is not None
                if k is None:
                    ranks[u] = INVALID if r == 0 else UNRANKED
                    continue
                picks[u].append(remaining[u].pop(k))
                if picks[u][-1] == samples[u].target:
                    ranks[u] = r
                else:
                    still.append(u)
            active = still
        progress.update(len(chunk))
    progress.close()
    return EvalOutput(ranks, valid, answers, picks)


def generate(model: nn.Module, tokenizer, samples: Sequence[LLMSample], ctx: RenderContext):
    """The paper's evaluation: iterative greedy generation, stopping each answer at a newline."""
    from cprec_recbole.llm.stopping import StopAtNewline

    if uses_item_tokens(ctx):
        raise ConfigError(GENERATE_REFUSED.format(key="inference"))

    stop = StopAtNewline(newline_token_ids(tokenizer))
    model.eval()
    return iterative_ranks(
        samples,
        ctx,
        lambda batch: generate_texts(model, tokenizer, batch, ctx, stop),
        _batches(tokenizer, samples, ctx),
    )


# ---------------------------------------------------------------- scoring


@torch.no_grad()
def candidate_log_likelihoods(
    model: nn.Module, tokenizer, samples: Sequence[LLMSample], ctx: RenderContext
) -> list[Tensor]:
    """Per sample, its candidates' scores on ``ctx.template``'s prompt (``candidate_scores``,
    no gradients, on the CPU)."""
    prompts = _encode(tokenizer, samples, ctx, model_device(model))
    counts = [len(s.candidates) for s in samples]
    return list(candidate_scores(model, tokenizer, samples, ctx, prompts).cpu().split(counts))


def score(model: nn.Module, tokenizer, samples: Sequence[LLMSample], ctx: RenderContext):
    """Rank candidates by answer likelihood; valid by construction, ties pessimistic."""
    score_rule(ctx.config)  # a bad key fails before any model call
    model.eval()
    n = len(samples)
    ranks = np.zeros(n, dtype=np.int64)
    answers = [""] * n
    picks: list[list[str]] = [[] for _ in range(n)]
    progress = _progress(ctx.config, n, "score")
    for chunk in _batches(tokenizer, samples, ctx):
        part = [samples[u] for u in chunk]
        for u, sample, scores in zip(
            chunk, part, candidate_log_likelihoods(model, tokenizer, part, ctx), strict=True
        ):
            scores = scores.numpy()[None]
            target = np.array([sample.candidates.index(sample.target)])
            ranks[u] = ranks_from_scores(scores, target, [sample.user_id])[0]
            picks[u] = [sample.candidates[k] for k in np.argsort(-scores[0], kind="stable")]
            answers[u] = ctx.titles[picks[u][0]]
        progress.update(len(chunk))
    progress.close()
    return EvalOutput(ranks, np.ones(n, dtype=bool), answers, picks)
