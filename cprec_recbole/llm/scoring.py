"""The likelihood of each candidate's answer after its prompt: what ``score`` ranks by and
listwise SFT trains on, so both training and evaluation import it from here.

``score_rule`` says which likelihood: ``mean`` (of the answer's tokens, or of its first
``score_max_tokens``) or ``distinct_prefix`` (of the answer's shortest prefix that no other
candidate's answer starts with).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cprec_recbole.llm.batching import EncodedBatch, LLMSample, RenderContext, answer_ids
from cprec_recbole.llm.projector import embed_batch, model_device
from cprec_recbole.llm.prompts import answer_text


def _token_log_probs(logits: Tensor, targets: Tensor) -> Tensor:
    """log p(target) per position without materialising a second vocab-sized tensor."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


SCORE_RULES = ("mean", "distinct_prefix")


def score_rule(config: Mapping[str, Any]) -> str:
    rule = config["score_rule"]
    if rule not in SCORE_RULES:
        raise ValueError(f"score_rule: {rule!r} is not one of {', '.join(SCORE_RULES)}")
    return rule


def distinct_prefixes(answers: Sequence[Sequence[int]]) -> list[list[int]]:
    """Each answer cut to its shortest prefix that no other answer starts with (whole answers
    that another one equals or extends stay whole)."""

    def common(a: Sequence[int], b: Sequence[int]) -> int:
        return next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    cut = []
    for k, a in enumerate(answers):
        shared = max((common(a, b) for j, b in enumerate(answers) if j != k), default=0)
        cut.append(list(a[: shared + 1]))
    return cut


def _answer_ids(
    tokenizer, samples: Sequence[LLMSample], ctx: RenderContext, rule: str
) -> list[list[list[int]]]:
    """Per sample, the candidate answer tokens ``rule`` reads."""
    texts = [answer_text(ctx.titles[c]) for s in samples for c in s.candidates]
    ids = iter(answer_ids(tokenizer, texts))
    answers = [[next(ids) for _ in s.candidates] for s in samples]
    if rule == "distinct_prefix":
        return [distinct_prefixes(user) for user in answers]
    limit = ctx.config.get("score_max_tokens")
    return [[a[: int(limit) if limit else None] for a in user] for user in answers]


def tree_layout(answers: Sequence[Sequence[Sequence[int]]]) -> dict[str, Tensor]:
    """Where each user's candidate answers sit after its prompt, all in one row.

    ``answers[b][c]`` holds candidate ``c``'s answer ids; every answer but its last token is
    fed (the last is only predicted). Returns, for ``B`` users and ``R`` fed slots per row:
    ``ids [B, R]`` (pad 0), ``segment [B, R]`` (candidate number, -1 on padding), ``depth
    [B, R]`` (offset inside the answer), and per scored token ``row``, ``column`` (0 = the
    prompt's last position, ``1 + j`` = fed slot ``j``), ``target`` and ``candidate`` (flat
    index over all users' candidates).
    """
    width = max(1, *(sum(len(a) - 1 for a in user) for user in answers))
    ids = torch.zeros(len(answers), width, dtype=torch.long)
    segment = torch.full_like(ids, -1)
    depth = torch.zeros_like(ids)
    scored: dict[str, list[int]] = {"row": [], "column": [], "target": [], "candidate": []}
    flat = 0
    for b, user in enumerate(answers):
        start = 0
        for c, answer in enumerate(user):
            n = len(answer) - 1
            ids[b, start : start + n] = torch.tensor(answer[:-1], dtype=torch.long)
            segment[b, start : start + n] = c
            depth[b, start : start + n] = torch.arange(n)
            scored["row"] += [b] * len(answer)
            scored["column"] += [0, *range(1 + start, 1 + start + n)]
            scored["target"] += list(answer)
            scored["candidate"] += [flat] * len(answer)
            start += n
            flat += 1
    out = {k: torch.tensor(v, dtype=torch.long) for k, v in scored.items()}
    return {"ids": ids, "segment": segment, "depth": depth, **out}


def tree_attention_mask(prompt_mask: Tensor, segment: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive ``[B, 1, P+R, P+R]`` mask: the prompt is causal; a fed answer token sees the
    prompt and the earlier tokens of its own answer only, never another candidate's."""
    batch, p = prompt_mask.shape
    r = segment.shape[1]
    device = prompt_mask.device
    keys = prompt_mask.bool()[:, None, :]
    allowed = torch.zeros(batch, p + r, p + r, dtype=torch.bool, device=device)
    allowed[:, :p, :p] = torch.ones(p, p, dtype=torch.bool, device=device).tril() & keys
    allowed[:, p:, :p] = keys
    same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] >= 0)
    allowed[:, p:, p:] = same & torch.ones(r, r, dtype=torch.bool, device=device).tril()
    allowed |= torch.eye(p + r, dtype=torch.bool, device=device)  # padding rows stay finite
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def candidate_scores(
    model: nn.Module,
    tokenizer,
    samples: Sequence[LLMSample],
    ctx: RenderContext,
    prompts: EncodedBatch,
) -> Tensor:
    """Every candidate's score after its sample's encoded prompt (``score_rule``; higher is
    likelier), flat over the samples' candidates in order, on the model's device, with
    gradients where enabled: ``score`` ranks by it and listwise SFT trains on it.

    One forward per batch: each row is the left-padded prompt followed by all its candidates'
    answers side by side (``tree_layout``); ``tree_attention_mask`` keeps the answers apart and
    their positions restart after the prompt, so every answer reads exactly what it would read
    alone, while the prompt is encoded once and no KV cache is copied per candidate. Logits are
    computed only from the prompt's last position on.
    """
    device = model_device(model)
    prompt = embed_batch(model, prompts, ctx.item_embeddings, ctx.projector)
    rule = score_rule(ctx.config)
    answers = _answer_ids(tokenizer, samples, ctx, rule)
    tree = {k: v.to(device) for k, v in tree_layout(answers).items()}
    fed = model.get_input_embeddings()(tree["ids"]).to(prompt.dtype)
    lengths = prompts.attention_mask.sum(-1, keepdim=True)
    logits = model(
        inputs_embeds=torch.cat([prompt, fed], dim=1),
        attention_mask=tree_attention_mask(prompts.attention_mask, tree["segment"], prompt.dtype),
        position_ids=torch.cat([prompts.position_ids, lengths + tree["depth"]], dim=1),
        logits_to_keep=tree["ids"].shape[1] + 1,
    ).logits
    log_probs = _token_log_probs(logits[tree["row"], tree["column"]], tree["target"])
    n = sum(len(s.candidates) for s in samples)
    total = log_probs.new_zeros(n).index_add(0, tree["candidate"], log_probs)  # differentiable
    if rule == "mean":
        total = total / torch.bincount(tree["candidate"], minlength=n)
    return total
