"""Reciprocal-rank fusion of two models' candidate orders (the folders' own, in the
diagnostics experiment's test)."""

from __future__ import annotations

from cprec_recbole.fusion import fuse_orders, places


def test_places_put_unlisted_candidates_after_the_listed_ones():
    assert places([2, 0], 4).tolist() == [2.0, 3.0, 1.0, 3.0]


def test_fusion_follows_agreement_and_breaks_ties_by_the_first_models_order():
    assert fuse_orders([0, 1, 2, 3], [0, 1, 2, 3], 4, k=60) == [0, 1, 2, 3]
    # reversed orders: the ends tie with each other (1/61 + 1/64 > 1/62 + 1/63), A breaks ties
    assert fuse_orders([0, 1, 2, 3], [3, 2, 1, 0], 4, k=60) == [0, 3, 1, 2]
    # a candidate second in both beats one first in A and last in B
    assert fuse_orders([0, 1, 2, 3], [1, 2, 3, 0], 4, k=1)[0] == 1


def test_a_generating_models_picks_lift_its_picks_above_the_unlisted():
    # B named only candidate 5 (its others tie, at place 2): 5 passes A's 4, not A's 3
    assert fuse_orders(list(range(6)), [5], 6, k=60) == [0, 1, 2, 3, 5, 4]
