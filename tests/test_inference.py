"""Answer parsing, iterative generation and KV-cached likelihood scoring on a tiny real Llama."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from llm_fixtures import (  # noqa: F401  (pytest fixtures)
    ITEM_INDEX,
    TITLES,
    one_thread_fixture,
    samples,
    tiny_model_fixture,
    tiny_tokenizer_fixture,
)

from cprec_recbole.builtin.prompt_templates import LLARA_HYBRID, LLARA_TEXT, UNIFIED
from cprec_recbole.config import PROPERTIES, read_yaml
from cprec_recbole.errors import ConfigError
from cprec_recbole.evaluation import INVALID, UNRANKED, first_pick_positions, rank_metrics
from cprec_recbole.llm.batching import RenderContext, encode_batch
from cprec_recbole.llm.inference import (
    candidate_log_likelihoods,
    derangement,
    generate,
    generate_texts,
    item_embedding_context,
    iterative_ranks,
    length_batches,
    newline_token_ids,
    parse_answer,
    score,
)
from cprec_recbole.llm.losses import answer_loss
from cprec_recbole.llm.projector import Projector, embed_batch
from cprec_recbole.llm.prompts import answer_text, render
from cprec_recbole.llm.scoring import distinct_prefixes
from cprec_recbole.llm.stopping import StopAtNewline

pytestmark = pytest.mark.usefixtures("one_thread")
CANDIDATES = ["Halo 3", "Mario Kart", "Tetris"]


def test_parse_answer_accepts_exactly_one_candidate_case_insensitively():
    assert parse_answer(" mario KART\nHalo 3", CANDIDATES) == 1  # only the first line counts
    assert parse_answer("The answer is TETRIS.", CANDIDATES) == 2


def test_parse_answer_rejects_no_candidate_and_two_candidates():
    assert parse_answer(" Zelda\n", CANDIDATES) is None
    assert parse_answer(" Halo 3 or Tetris\n", CANDIDATES) is None
    assert parse_answer("\nTetris", CANDIDATES) == 2  # leading whitespace is stripped first


LLM_DEFAULTS = read_yaml(PROPERTIES / "model" / "LLMRecommender.yaml")


def context(config=None, **kw) -> RenderContext:
    base = {**LLM_DEFAULTS, "show_progress": False, "eval_batch_users": 3}
    return RenderContext(LLARA_HYBRID, TITLES, ITEM_INDEX, "game", {**base, **(config or {})}, **kw)


def test_length_batches_group_similar_prompts_and_cover_every_sample_once():
    assert length_batches([5, 1, 3, 2, 4], 2) == [[1, 3], [2, 4], [0]]
    assert length_batches([], 4) == []


def test_iterative_top5_never_repeats_a_candidate_and_rerenders_without_picks():
    users = samples(4, n_candidates=8)
    seen_prompts: dict[str, list[list[str]]] = {s.user_id: [] for s in users}

    def answer_last_non_target(batch):
        out = []
        for s in batch:
            seen_prompts[s.user_id].append(list(s.candidates))
            others = [c for c in s.candidates if c != s.target]
            out.append(f" {TITLES[others[-1]].upper()}\nextra")
        return out

    result = iterative_ranks(users, context(), answer_last_non_target, [[0, 1, 2], [3]])
    assert result.ranks.tolist() == [UNRANKED] * 4  # never picked within 5 rounds
    assert result.valid.all()
    for s, picks in zip(users, result.picks, strict=True):
        assert len(picks) == 5 and len(set(picks)) == 5 and s.target not in picks
        for r, cands in enumerate(seen_prompts[s.user_id]):
            assert set(cands) == set(s.candidates) - set(picks[:r])


def test_iterative_rank_is_the_round_of_the_positive_or_invalid():
    users = samples(3, n_candidates=6)
    order = {s.user_id: [c for c in s.candidates if c != s.target] for s in users}

    def answer(batch):
        out = []
        for s in batch:
            if s.user_id == "u0":
                out.append(" nothing I know\n")  # invalid at round 0
            elif s.user_id == "u1":  # two wrong picks, then the positive
                wrong = [c for c in order["u1"][:2] if c in s.candidates]
                out.append(f" {TITLES[wrong[0] if wrong else s.target]}\n")
            else:  # valid once, then repeats its first pick (no longer a candidate): invalid
                out.append(f" {TITLES[order['u2'][0]]}\n")
        return out

    result = iterative_ranks(users, context(), answer, [[2, 0], [1]])
    assert result.ranks.tolist() == [INVALID, 2, UNRANKED]
    assert result.valid.tolist() == [False, True, True]
    assert result.answers[0] == " nothing I know\n"
    first = [users[u].candidates.index(order[f"u{u}"][0]) for u in (1, 2)]
    found = first_pick_positions([s.candidates for s in users], result.picks)
    assert found.tolist() == [INVALID, *first]  # the round-0 pick's candidate position


def slow_answer_log_probs(model, tokenizer, sample, ctx) -> list[torch.Tensor]:
    """Reference: one full forward of prompt + answer per candidate, no padding, no tree; the
    log-probability of each answer token."""
    out = []
    for candidate in sample.candidates:
        single = replace(sample, target=candidate)
        batch = encode_batch(
            tokenizer, ctx.template, [single], ctx.titles, ctx.item_index, ctx.noun, True
        )
        embeds = embed_batch(model, batch, ctx.item_embeddings, ctx.projector)
        logits = model(inputs_embeds=embeds).logits[0, :-1].log_softmax(-1)
        targets = batch.labels[0, 1:]
        keep = targets != -100
        out.append(logits[keep].gather(-1, targets[keep, None]).squeeze(-1))
    return out


def slow_scores(model, tokenizer, sample, ctx, limit: int | None = None) -> torch.Tensor:
    """The mean over the first ``limit`` answer tokens, by the reference."""
    per_token = slow_answer_log_probs(model, tokenizer, sample, ctx)
    return torch.stack([lp[:limit].mean() for lp in per_token])


@pytest.mark.parametrize("limit", [None, 1, 2])
@torch.no_grad()
def test_one_pass_tree_scores_equal_full_forward_per_candidate(tiny_tokenizer, tiny_model, limit):
    torch.manual_seed(0)
    users = samples(4, n_candidates=5)
    users[2] = replace(users[2], candidates=users[2].candidates[:3])  # unequal candidate counts
    ctx = context(
        {"score_max_tokens": limit},
        item_embeddings=torch.randn(len(TITLES), 8),
        projector=Projector(8, tiny_model.config.hidden_size),
    )
    fast = candidate_log_likelihoods(tiny_model, tiny_tokenizer, users, ctx)
    for sample, got in zip(users, fast, strict=True):
        expected = slow_scores(tiny_model, tiny_tokenizer, sample, ctx, limit)
        assert torch.allclose(got, expected, atol=1e-5), (got, expected)

    result = score(tiny_model, tiny_tokenizer, users, ctx)
    for sample, scores, rank in zip(users, fast, result.ranks, strict=True):
        target = sample.candidates.index(sample.target)
        assert rank == int((scores >= scores[target]).sum()) - 1
    assert result.valid.all()


def test_distinct_prefixes_stop_where_no_other_answer_shares_the_prefix():
    answers = [[1, 2, 3, 9], [1, 5, 9], [7, 9], [1, 2, 3, 9], [1, 2, 4, 9]]
    assert distinct_prefixes(answers) == [[1, 2, 3, 9], [1, 5], [7], [1, 2, 3, 9], [1, 2, 4]]


@torch.no_grad()
def test_distinct_prefix_score_is_the_log_probability_of_that_prefix(tiny_tokenizer, tiny_model):
    torch.manual_seed(0)
    titles = {**TITLES, "i1": "Red Castle Saga", "i2": "Red Hills", "i3": "Red Castle"}
    users = [replace(s, candidates=["i0", "i1", "i2", "i3", *s.candidates]) for s in samples(3)]
    users = [replace(s, candidates=list(dict.fromkeys(s.candidates))) for s in users]
    ctx = replace(
        context(
            {"score_rule": "distinct_prefix"},
            item_embeddings=torch.randn(len(TITLES), 8),
            projector=Projector(8, tiny_model.config.hidden_size),
        ),
        titles=titles,
    )
    fast = candidate_log_likelihoods(tiny_model, tiny_tokenizer, users, ctx)
    depths = []
    for sample, got in zip(users, fast, strict=True):
        answers = tiny_tokenizer(
            [answer_text(titles[c]) for c in sample.candidates], add_special_tokens=False
        )["input_ids"]
        lengths = [len(p) for p in distinct_prefixes(answers)]
        per_token = slow_answer_log_probs(tiny_model, tiny_tokenizer, sample, ctx)
        expected = torch.stack([lp[:n].sum() for lp, n in zip(per_token, lengths, strict=True)])
        assert torch.allclose(got, expected, atol=1e-5), (got, expected)
        depths += lengths
    assert max(depths) > 2 and min(depths) == 1  # shared prefixes were really scored deeper


def test_unknown_score_rule_names_the_key_and_the_choices(tiny_tokenizer, tiny_model):
    with pytest.raises(ValueError, match="score_rule: 'sum' is not one of mean, distinct_prefix"):
        score(tiny_model, tiny_tokenizer, samples(1), context({"score_rule": "sum"}))


@torch.no_grad()
def test_batched_left_padded_generation_equals_one_prompt_at_a_time(tiny_tokenizer, tiny_model):
    ctx = context(
        {"max_new_tokens": 6},
        item_embeddings=torch.randn(len(TITLES), 8),
        projector=Projector(8, tiny_model.config.hidden_size),
    )
    users = samples(3)
    batched = generate_texts(tiny_model, tiny_tokenizer, users, ctx)
    alone = [generate_texts(tiny_model, tiny_tokenizer, [s], ctx)[0] for s in users]
    assert batched == alone


def test_stop_at_newline_stops_each_row_once_it_generated_a_newline():
    stop = StopAtNewline(torch.tensor([7, 9]))
    generated = torch.tensor([[1, 2, 3], [1, 9, 3], [7, 2, 2]])
    assert stop(generated, None).tolist() == [False, True, True]


def test_newline_tokens_cover_every_token_that_decodes_to_a_newline(tiny_tokenizer):
    ids = newline_token_ids(tiny_tokenizer)
    assert tiny_tokenizer("\n", add_special_tokens=False)["input_ids"][-1] in ids.tolist()
    assert all("\n" in tiny_tokenizer.decode([i]) for i in ids.tolist())


def memorise(model, tokenizer, users, ctx, steps: int = 80) -> None:
    """Plain AdamW on the answer-only loss until the tiny model knows each prompt's answer."""
    params = list(model.parameters()) + list(ctx.projector.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    batch = encode_batch(tokenizer, ctx.template, users, TITLES, ITEM_INDEX, "game", True)
    model.train()
    for _ in range(steps):
        loss = answer_loss(model, batch, ctx.item_embeddings, ctx.projector)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.02:
            break
    model.eval()


def memorised_hybrid(model, tokenizer):
    """Four users of five candidates each, their hybrid prompts' answers memorised by ``model``."""
    torch.manual_seed(0)
    users = samples(4, n_candidates=5)
    ctx = context(
        item_embeddings=torch.randn(len(TITLES), 8),
        projector=Projector(8, model.config.hidden_size),
    )
    memorise(model, tokenizer, users, ctx)
    return users, ctx


def test_memorised_model_generate_and_score_pick_the_same_correct_top1(tiny_tokenizer, tiny_model):
    users, ctx = memorised_hybrid(tiny_model, tiny_tokenizer)
    generated = generate(tiny_model, tiny_tokenizer, users, ctx)
    scored = score(tiny_model, tiny_tokenizer, users, ctx)
    assert generated.ranks.tolist() == [0] * 4
    assert scored.ranks.tolist() == [0] * 4
    assert generated.valid.all()
    assert generated.answers == [answer_text(TITLES[s.target]) for s in users]
    assert scored.answers == [TITLES[s.target] for s in users]
    assert [p[0] for p in generated.picks] == [p[0] for p in scored.picks]
    assert all(sorted(p) == sorted(s.candidates) for p, s in zip(scored.picks, users))


def test_text_only_model_runs_without_projector(tiny_tokenizer, tiny_model):
    users = samples(2, n_candidates=3)
    ctx = replace(context({"max_new_tokens": 3}), template=UNIFIED)
    assert "item title candidates" in render(UNIFIED, ["a"], ["b"], "game")
    out = score(tiny_model, tiny_tokenizer, users, ctx)
    likelihoods = candidate_log_likelihoods(tiny_model, tiny_tokenizer, users, ctx)
    for user, rank, answer, scores in zip(users, out.ranks, out.answers, likelihoods, strict=True):
        positive = scores[user.candidates.index(user.target)]
        assert rank == int((scores >= positive).sum()) - 1  # ties against the positive
        assert answer == TITLES[user.candidates[int(scores.argmax())]]
    gen = generate(tiny_model, tiny_tokenizer, users, ctx)
    assert np.isin(gen.ranks, [INVALID, 0, 1, 2]).all()


def test_score_refuses_nan_likelihoods_naming_a_user(tiny_tokenizer, tiny_model):
    """A diverged model must not report metrics: a NaN positive would read as invalid."""
    with torch.no_grad():
        tiny_model.lm_head.weight.fill_(float("nan"))
    ctx = replace(context(), template=UNIFIED)
    with pytest.raises(ValueError, match=r"NaN candidate scores \(first: user 'u\d'\)"):
        score(tiny_model, tiny_tokenizer, samples(2, n_candidates=3), ctx)


def test_a_positive_never_picked_in_one_round_is_no_hit_at_any_k():
    users = samples(3, n_candidates=6)

    def answer_a_non_target(batch):
        return [f" {TITLES[next(c for c in s.candidates if c != s.target)]}\n" for s in batch]

    result = iterative_ranks(users, context({"eval_rounds": 1}), answer_a_non_target, [[0, 1, 2]])
    metrics = rank_metrics(result.ranks)
    assert metrics["hr@3"] == metrics["hr@5"] == 0.0 and result.valid.all()


def test_answer_loss_on_answer_logits_only_equals_the_full_lm_loss(tiny_tokenizer, tiny_model):
    torch.manual_seed(0)
    users = samples(3, n_candidates=4)
    users[1] = replace(users[1], history=users[1].history[:1])  # rows of unequal length
    ctx = context(
        item_embeddings=torch.randn(len(TITLES), 8),
        projector=Projector(8, tiny_model.config.hidden_size),
    )
    batch = encode_batch(tiny_tokenizer, ctx.template, users, TITLES, ITEM_INDEX, "game", True)
    embeds = embed_batch(tiny_model, batch, ctx.item_embeddings, ctx.projector)
    full = tiny_model(
        inputs_embeds=embeds,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        labels=batch.labels,
    ).loss
    fast = answer_loss(tiny_model, batch, ctx.item_embeddings, ctx.projector)
    torch.testing.assert_close(fast, full)
    fast.backward()  # and it trains the projector
    assert ctx.projector.net[0].weight.grad.abs().sum() > 0


def test_derangement_is_seeded_moves_every_item_and_draws_all_of_them_alike():
    assert torch.equal(derangement(50, 7), derangement(50, 7))
    assert not torch.equal(derangement(50, 7), derangement(50, 8))
    assert sorted(derangement(50, 7).tolist()) == list(range(50))
    drawn = Counter(tuple(derangement(4, seed).tolist()) for seed in range(900))
    assert all(sorted(d) == [0, 1, 2, 3] and all(d[i] != i for i in range(4)) for d in drawn)
    assert len(drawn) == 9 and all(60 < c < 140 for c in drawn.values())  # 9 derangements of 4


def test_permuted_embeddings_give_each_item_another_items_row_and_keep_padding():
    rows = torch.randn(len(TITLES) + 1, 8)  # row 0: padding, as SASRec's table
    ctx = context(item_embeddings=rows)
    assert item_embedding_context(ctx, "trained", LLARA_TEXT, 0) is ctx
    permuted = item_embedding_context(ctx, "permuted", LLARA_TEXT, 0).item_embeddings
    assert torch.equal(
        permuted, item_embedding_context(ctx, "permuted", LLARA_TEXT, 0).item_embeddings
    )
    assert torch.equal(permuted[0], rows[0])
    source = [int((rows == row).all(-1).nonzero()) for row in permuted[1:]]
    assert sorted(source) == list(range(1, len(rows)))
    assert all(s != i for i, s in enumerate(source, start=1))
    assert item_embedding_context(ctx, "none", LLARA_TEXT, 0).template is LLARA_TEXT


def test_item_embedding_modes_a_model_cannot_run_name_the_key():
    with pytest.raises(ConfigError, match="eval_item_embeddings=permuted: .* no item embeddings"):
        item_embedding_context(context(), "permuted", LLARA_TEXT, 0)
    with pytest.raises(ConfigError, match="eval_item_embeddings=none needs a text_template"):
        item_embedding_context(context(item_embeddings=torch.zeros(3, 2)), "none", None, 0)


def test_permuted_embeddings_change_a_trained_hybrid_models_scores(tiny_tokenizer, tiny_model):
    users, ctx = memorised_hybrid(tiny_model, tiny_tokenizer)
    before = candidate_log_likelihoods(tiny_model, tiny_tokenizer, users, ctx)
    trained = item_embedding_context(ctx, "trained", LLARA_TEXT, 2024)
    permuted = item_embedding_context(ctx, "permuted", LLARA_TEXT, 2024)
    same = candidate_log_likelihoods(tiny_model, tiny_tokenizer, users, trained)
    moved = candidate_log_likelihoods(tiny_model, tiny_tokenizer, users, permuted)
    assert all(torch.equal(a, b) for a, b in zip(before, same, strict=True))
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(before, moved, strict=True))


def test_item_token_score_adds_each_candidates_logit_at_the_last_prompt_state(
    tiny_tokenizer, tiny_model
):
    users = samples(3, n_candidates=5)
    torch.manual_seed(0)
    embeddings = torch.randn(len(TITLES), 8)
    projector = Projector(8, tiny_model.config.hidden_size)
    titles = context({"score_rule": "mean"}, item_embeddings=embeddings, projector=projector)
    items = replace(titles, config={**titles.config, "item_token_score": True})
    base = candidate_log_likelihoods(tiny_model, tiny_tokenizer, users, titles)
    scored = candidate_log_likelihoods(tiny_model, tiny_tokenizer, users, items)
    prompts = encode_batch(tiny_tokenizer, LLARA_HYBRID, users, TITLES, ITEM_INDEX, "game", False)
    with torch.no_grad():  # the prompts alone, left padded: the last column is each prompt's end
        states = tiny_model(
            inputs_embeds=embed_batch(tiny_model, prompts, embeddings, projector),
            attention_mask=prompts.attention_mask,
            position_ids=prompts.position_ids,
            output_hidden_states=True,
        ).hidden_states[-1][:, -1]
        for user, state, b, s in zip(users, states, base, scored, strict=True):
            tokens = projector(embeddings[[ITEM_INDEX[c] for c in user.candidates]])
            torch.testing.assert_close(s, b + tokens @ state, rtol=1e-4, atol=1e-4)
    # the text-only diagnostic takes the item logits away with the embeddings
    none = item_embedding_context(items, "none", LLARA_TEXT, 0)
    text = replace(titles, template=LLARA_TEXT)
    for a, b in zip(
        candidate_log_likelihoods(tiny_model, tiny_tokenizer, users, none),
        candidate_log_likelihoods(tiny_model, tiny_tokenizer, users, text),
        strict=True,
    ):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="inference=generate never computes; set inference=score"):
        generate(tiny_model, tiny_tokenizer, users, items)
