"""The likelihood of each candidate's answer after its prompt: what ``score`` ranks by and
listwise SFT trains on, so both training and evaluation import it from here.

``score_rule`` says which likelihood: ``mean`` (of the answer's tokens, or of its first
``score_max_tokens``) or ``distinct_prefix`` (of the answer's shortest prefix that no other
candidate's answer starts with). With ``item_token_score`` each candidate's score also adds its
item token's logit (:func:`item_token_logits`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cprec_recbole.errors import ConfigError
from cprec_recbole.llm.batching import EncodedBatch, LLMSample, RenderContext, answer_ids
from cprec_recbole.llm.projector import embed_batch, model_device
from cprec_recbole.llm.prompts import answer_text


def _token_log_probs(logits: Tensor, targets: Tensor) -> Tensor:
    """log p(target) per position without materialising a second vocab-sized tensor."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


SCORE_RULES = ("mean", "distinct_prefix")


def item_token_logits(hidden: Tensor, samples: Sequence[LLMSample], ctx: RenderContext) -> Tensor:
    """Per candidate (flat, in order), ``<h, Proj(e_c)>``: ``h`` its sample's last prompt state
    (after the final norm, what the LM head reads), ``Proj(e_c)`` the soft token the hybrid
    prompt feeds for item ``c``. It is the logit the LM head would give ``c`` were the items
    tokens of the vocabulary (exactly so for tied embeddings, SmolLM2's), a direct path from
    the collaborative embeddings to the ranking, where the title's likelihood reaches them only
    through attention (the diagnostics found that path unused)."""
    rows = [ctx.item_index[c] for s in samples for c in s.candidates]
    owner = [b for b, s in enumerate(samples) for _ in s.candidates]
    dtype = next(ctx.projector.parameters()).dtype
    index = torch.tensor(rows, device=ctx.item_embeddings.device)
    tokens = ctx.projector(ctx.item_embeddings[index].to(dtype))
    states = hidden[torch.tensor(owner, device=hidden.device)].to(dtype)
    return (states * tokens.to(states.device)).sum(-1)


GENERATE_REFUSED = (
    "item_token_score: true adds to the candidates' scores, which {key}=generate never "
    "computes; set {key}=score"
)


def check_item_token_score(config: Mapping[str, Any], has_embeddings: bool) -> None:
    """``item_token_score`` needs the projected item embeddings, a loss that trains it and
    scoring to validate with (``generate`` refuses it at test time)."""
    if not config.get("item_token_score"):
        return
    if not has_embeddings:
        raise ConfigError(
            "item_token_score: true needs item embeddings and a projector (LLaRA, CPTLLaRA, "
            "CPRec); this model's prompts are text-only"
        )
    if config["sft_objective"] == "answer":
        raise ConfigError(
            "item_token_score: true is trained only by the listwise loss; set "
            "sft_objective=listwise or mix (the answer loss would leave the item logits untrained)"
        )
    if config["valid_inference"] == "generate":
        raise ConfigError(GENERATE_REFUSED.format(key="valid_inference"))


def uses_item_tokens(ctx: RenderContext) -> bool:
    """Whether scores add item-token logits: asked for, and the context has item embeddings
    (``eval_item_embeddings=none`` takes them away with the hybrid prompt)."""
    return bool(ctx.config.get("item_token_score")) and ctx.item_embeddings is not None


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
    likelier; plus its item token's logit with ``item_token_score``), flat over the samples'
    candidates in order, on the model's device, with gradients where enabled: ``score`` ranks
    by it and listwise SFT trains on it.

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
    items = uses_item_tokens(ctx)
    out = model(
        inputs_embeds=torch.cat([prompt, fed], dim=1),
        attention_mask=tree_attention_mask(prompts.attention_mask, tree["segment"], prompt.dtype),
        position_ids=torch.cat([prompts.position_ids, lengths + tree["depth"]], dim=1),
        logits_to_keep=tree["ids"].shape[1] + 1,
        output_hidden_states=items,
    )
    log_probs = _token_log_probs(out.logits[tree["row"], tree["column"]], tree["target"])
    n = sum(len(s.candidates) for s in samples)
    total = log_probs.new_zeros(n).index_add(0, tree["candidate"], log_probs)  # differentiable
    if rule == "mean":
        total = total / torch.bincount(tree["candidate"], minlength=n)
    if items:  # rows are left padded: the prompt's last position is column P - 1 of every row
        total = total + item_token_logits(
            out.hidden_states[-1][:, prompt.shape[1] - 1], samples, ctx
        )
    return total
