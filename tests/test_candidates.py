"""Fixed candidate sets: drawn once, never from the user's own items, shared by every model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cprec_recbole.command import build_config
from cprec_recbole.data.candidates import draw_candidate_sets, load_candidate_sets
from cprec_recbole.data.prepare import prepare
from cprec_recbole.data.transforms import leave_one_out, user_sequences
from cprec_recbole.quick_start import run
from tests.conftest import TINY_SIZES, cyclic_sequences


def tiny_inter():
    seqs = cyclic_sequences(40, 30, 8)
    return pd.DataFrame(
        [(u, i, t) for u, items in seqs.items() for t, i in enumerate(items)],
        columns=["user_id", "item_id", "timestamp"],
    )


def test_negatives_are_never_items_the_user_interacted_with_and_never_repeat():
    inter = tiny_inter()
    rows = leave_one_out(user_sequences(inter), "test", 10)
    sets = draw_candidate_sets(inter, rows, 19, seed=3)
    seen = inter.groupby("user_id")["item_id"].agg(set)
    for user, target, candidates in zip(sets["user_id"], sets["target"], sets["candidates"]):
        assert len(candidates) == 20 and len(set(candidates)) == 20
        assert list(candidates).count(target) == 1
        assert not (set(candidates) - {target}) & seen[user]


def test_candidate_sets_are_reproducible_for_a_seed():
    inter = tiny_inter()
    rows = leave_one_out(user_sequences(inter), "valid", 10)
    a = draw_candidate_sets(inter, rows, 19, seed=5)["candidates"]
    b = draw_candidate_sets(inter, rows, 19, seed=5)["candidates"]
    c = draw_candidate_sets(inter, rows, 19, seed=6)["candidates"]
    assert all((x == y).all() for x, y in zip(a, b))
    assert any((x != y).any() for x, y in zip(a, c))


def test_persisted_candidates_round_trip_and_match_the_split(tiny_overrides, plugins):
    data = prepare(build_config("SASRec", "Tiny", plugins, overrides=tiny_overrides), plugins)
    rows = data.eval_rows("test")
    stored = load_candidate_sets(data.candidate_path("test"))
    assert len(rows) == len(stored) == 60
    assert all(t in c for t, c in zip(rows["target"], rows["candidates"]))
    assert isinstance(rows["candidates"].iloc[0], np.ndarray)


def test_two_models_read_byte_identical_candidate_files(tiny_overrides, tiny_base):
    sasrec = run("SASRec", "Tiny", overrides={**tiny_overrides, "epochs": 1})
    gru = run("GRU4Rec", "Tiny", overrides={**tiny_base, **TINY_SIZES["GRU4Rec"], "epochs": 1})
    assert sasrec["candidates_sha256"] == gru["candidates_sha256"]
    assert set(sasrec["candidates_sha256"]) == {"valid", "test"}
    assert sasrec["folder"] != gru["folder"]
