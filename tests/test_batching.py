"""Batch encoding: left padding, answer-only labels, placeholder slots and embedding injection."""

from __future__ import annotations

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
from cprec_recbole.data.titles import distinct_titles
from cprec_recbole.llm.batching import (
    IGNORE_INDEX,
    LLMSample,
    encode_batch,
    position_ids,
    prompt_titles,
    shorten_titles,
)
from cprec_recbole.llm.inference import parse_answer
from cprec_recbole.llm.projector import Projector, embed_batch, inject
from cprec_recbole.llm.prompts import answer_text, render


def encode(tokenizer, with_answer=True, template=LLARA_HYBRID, **kw):
    return encode_batch(
        tokenizer, template, samples(), TITLES, ITEM_INDEX, "game", with_answer, **kw
    )


def test_rows_are_left_padded(tiny_tokenizer):
    batch = encode(tiny_tokenizer)
    mask = batch.attention_mask
    assert (mask[:, -1] == 1).all()
    assert (mask.sum(-1) < mask.shape[1]).any()  # prompts differ in length
    assert (mask.diff(dim=1) >= 0).all()  # zeros only before ones
    assert (batch.input_ids[mask == 0] == tiny_tokenizer.pad_token_id).all()
    assert position_ids(mask)[mask.bool()].tolist() == [
        p for n in mask.sum(-1).tolist() for p in range(n)
    ]


def test_labels_equal_input_ids_exactly_on_the_answer_tokens(tiny_tokenizer):
    batch = encode(tiny_tokenizer)
    for b, sample in enumerate(samples()):
        answer = tiny_tokenizer(answer_text(TITLES[sample.target]), add_special_tokens=False)
        n = len(answer["input_ids"])
        assert batch.labels[b, -n:].tolist() == answer["input_ids"]
        assert batch.labels[b, -n:].equal(batch.input_ids[b, -n:])
        assert (batch.labels[b, :-n] == IGNORE_INDEX).all()  # prompt and padding


def test_answer_follows_the_exact_generation_prefix(tiny_tokenizer):
    with_answer = encode(tiny_tokenizer)
    prompt_only = encode(tiny_tokenizer, with_answer=False)
    assert prompt_only.labels is None
    for b in range(len(samples())):
        full = with_answer.input_ids[b][with_answer.attention_mask[b].bool()]
        prefix = prompt_only.input_ids[b][prompt_only.attention_mask[b].bool()]
        assert full[: len(prefix)].equal(prefix)
        assert (
            with_answer.labels[b][with_answer.attention_mask[b].bool()][: len(prefix)] == -100
        ).all()
        prompt = render(LLARA_HYBRID, *_titles(samples()[b]), "game")
        assert tiny_tokenizer.decode(prefix, skip_special_tokens=False).endswith(prompt)


def _titles(sample: LLMSample):
    return [TITLES[i] for i in sample.history], [TITLES[i] for i in sample.candidates]


def test_slots_are_every_placeholder_matched_to_history_then_candidates(tiny_tokenizer):
    batch = encode(tiny_tokenizer)
    ph = tiny_tokenizer.convert_tokens_to_ids(["[HistoryEmb]", "[CansEmb]"])
    assert batch.input_ids[batch.slot_rows, batch.slot_cols].tolist() == [
        ph[0] if k < len(s.history) else ph[1]
        for s in samples()
        for k in range(len(s.history) + len(s.candidates))
    ]
    assert batch.slot_items.tolist() == [
        ITEM_INDEX[i] for s in samples() for i in s.history + s.candidates
    ]


def test_hybrid_false_samples_render_text_only_without_embedding_slots(tiny_tokenizer):
    hybrid = torch.tensor([True, False, True, False])
    batch = encode(tiny_tokenizer, hybrid=hybrid, text_template=LLARA_TEXT)
    ph = tiny_tokenizer.convert_tokens_to_ids(["[HistoryEmb]", "[CansEmb]", "[PH]"])
    for b, is_hybrid in enumerate(hybrid.tolist()):
        row = batch.input_ids[b]
        assert (row == ph[0]).any().item() == is_hybrid
        assert (row == ph[1]).any().item() == is_hybrid
        assert (row == ph[2]).any().item() != is_hybrid
    assert set(batch.slot_rows.tolist()) == {0, 2}
    with pytest.raises(ValueError, match="text_template"):
        encode(tiny_tokenizer, hybrid=hybrid)


def test_text_only_template_has_no_slots(tiny_tokenizer):
    batch = encode(tiny_tokenizer, template=UNIFIED)
    assert batch.slot_rows.numel() == 0
    assert "item title candidates" in tiny_tokenizer.decode(batch.input_ids[0])


def test_a_title_containing_a_placeholder_is_reported(tiny_tokenizer):
    titles = dict(TITLES, i0="Cheat [CansEmb] Code")
    with pytest.raises(ValueError, match="placeholder"):
        encode_batch(tiny_tokenizer, LLARA_HYBRID, samples(), titles, ITEM_INDEX, "game", True)


def test_shorten_titles_keeps_the_first_tokens(tiny_tokenizer):
    short = shorten_titles(tiny_tokenizer, TITLES, 1)
    for item, title in TITLES.items():
        first = tiny_tokenizer(title, add_special_tokens=False)["input_ids"][:1]
        assert short[item] == tiny_tokenizer.decode(first).strip()
        assert title.startswith(short[item])
    assert short["i4"] != TITLES["i4"]
    assert shorten_titles(tiny_tokenizer, TITLES, None) == TITLES


def test_titles_items_share_after_the_cut_are_numbered_so_answers_name_one(tiny_tokenizer):
    cut = len(tiny_tokenizer("Red Castle", add_special_tokens=False)["input_ids"])
    titles = {"a": "Red Castle", "b": "Red Castle of Doom", "c": "Hills", "d": "Red Castle"}
    config = {"max_title_tokens": cut, "distinct_titles": True}
    numbered = prompt_titles(tiny_tokenizer, titles, config)
    assert numbered == {
        "a": "Red Castle (1)",
        "b": "Red Castle (2)",
        "c": "Hills",
        "d": "Red Castle (3)",
    }
    candidates = [numbered[i] for i in "abcd"]
    assert [parse_answer(f"{t}\n", candidates) for t in candidates] == [0, 1, 2, 3]
    plain = prompt_titles(tiny_tokenizer, titles, {**config, "distinct_titles": False})
    assert parse_answer("Red Castle\n", [plain[i] for i in "abcd"]) is None  # 3 candidates match
    assert distinct_titles({1: "X (1)", 2: "X", 3: "x"}) == {
        1: "X (1) (1)",
        2: "X (1) (2)",
        3: "x (2)",
    }


def slow_inject(embeds, batch, table, projector):
    """Reference: loop over samples, find each placeholder, assign the next item in order."""
    out = embeds.clone()
    k = 0
    for b in range(embeds.shape[0]):
        for t in range(embeds.shape[1]):
            if k < len(batch.slot_rows) and (batch.slot_rows[k], batch.slot_cols[k]) == (b, t):
                out[b, t] = projector(table[batch.slot_items[k]])
                k += 1
    assert k == len(batch.slot_rows)
    return out


@pytest.mark.usefixtures("one_thread")
def test_injection_equals_a_slow_reference_and_leaves_the_embeddings_untouched(
    tiny_tokenizer, tiny_model
):
    torch.manual_seed(0)
    batch = encode(
        tiny_tokenizer, hybrid=torch.tensor([True, False, True, True]), text_template=LLARA_TEXT
    )
    table = torch.randn(len(TITLES), 8)
    projector = Projector(8, tiny_model.config.hidden_size)
    embeds = tiny_model.get_input_embeddings()(batch.input_ids)
    before = embeds.detach().clone()
    fast = inject(embeds, batch, table, projector)
    assert torch.allclose(fast, slow_inject(embeds, batch, table, projector), atol=1e-6)
    assert embeds.equal(before)
    untouched = torch.ones_like(batch.input_ids, dtype=torch.bool)
    untouched[batch.slot_rows, batch.slot_cols] = False
    assert fast[untouched].equal(before[untouched])

    embed_batch(tiny_model, batch, table, projector).sum().backward()
    assert projector.net[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="projector"):
        embed_batch(tiny_model, batch)
