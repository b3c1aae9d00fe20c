"""Candidate-set metrics on hand-made ranks and scores: ties, NaN, HR@k, NDCG@k, HR@1 of valid."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cprec_recbole.evaluation import (
    INVALID,
    UNRANKED,
    evaluate_ranks,
    rank_metrics,
    ranks_from_scores,
)


def test_rank_is_the_number_of_candidates_scored_at_least_as_high_as_the_positive():
    scores = np.array(
        [
            [0.2, 0.9, 0.5, 0.1],  # two strictly ahead
            [0.5, 0.9, 0.5, 0.5],  # one ahead, two tied: ties count against the positive
            [0.7, 0.7, 0.7, 0.7],  # all tied: last
            [3.0, -np.inf, 1.0, 2.0],  # a -inf negative is simply behind
        ]
    )
    assert ranks_from_scores(scores, np.array([2, 0, 3, 0])).tolist() == [1, 3, 3, 0]


@pytest.mark.parametrize(
    "row", [[np.nan, 0.1, 0.2], [0.9, np.nan, 0.2]], ids=["nan_positive", "nan_negative"]
)
def test_nan_scores_are_refused_naming_how_many_users_and_the_first(row):
    """A NaN positive used to rank as an invalid answer and a NaN negative as behind it."""
    scores = np.array([[0.3, 0.2, 0.1], row, row])
    with pytest.raises(ValueError, match=r"2 of 3 users .* NaN .*first: user 'u1'"):
        ranks_from_scores(scores, np.array([0, 0, 0]), ["u0", "u1", "u2"])
    with pytest.raises(ValueError, match=r"first: row 1\)"):
        ranks_from_scores(scores, np.array([0, 0, 0]))


def test_hr_and_ndcg_match_hand_computed_values_for_ranks_0_1_2_and_beyond_k():
    ranks = np.array([0, 1, 2, 3, 7, INVALID, UNRANKED, 0])
    out = rank_metrics(ranks, ks=(1, 3, 5))
    n = len(ranks)
    assert out["hr@1"] == pytest.approx(2 / n)
    assert out["hr@3"] == pytest.approx(4 / n)
    assert out["hr@5"] == pytest.approx(5 / n)
    # DCG of a hit at rank r is 1 / log2(r + 2): 1, 0.6309, 0.5, 0.4307 for r = 0..3.
    assert out["ndcg@3"] == pytest.approx((1 + 1 / math.log2(3) + 0.5 + 1) / n)
    assert out["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 0.5 + 1 / math.log2(5) + 1) / n)
    assert "ndcg@1" not in out  # equals hr@1


def test_hr_at_1_of_valid_divides_correct_answers_by_valid_ones_only():
    """Generate mode: of 6 users, 4 named exactly one candidate, 2 of them the positive."""
    ranks = np.array([0, INVALID, 0, 2, INVALID, UNRANKED])
    valid = np.array([True, False, True, True, False, True])
    out = evaluate_ranks(ranks, np.array([3, 3, 5, 5, 9, 9]), [0, 5], valid)
    assert out["hr@1"] == pytest.approx(2 / 6)
    assert out["valid_ratio"] == pytest.approx(4 / 6)
    assert out["hr@1_of_valid"] == pytest.approx(2 / 4)
    assert out["hr@3"] == pytest.approx(3 / 6) and out["users"] == 6
    assert (out["hr@1[0,5)"], out["users[0,5)"]) == (pytest.approx(1 / 2), 2)
    assert (out["hr@1[5,..)"], out["users[5,..)"]) == (pytest.approx(1 / 4), 4)


def test_without_validity_every_answer_is_valid_and_hr_at_1_of_valid_is_hr_at_1():
    out = evaluate_ranks(np.array([0, 1, 0, 4]), np.array([2, 2, 2, 2]), [0])
    assert out["valid_ratio"] == 1.0 and out["hr@1_of_valid"] == out["hr@1"] == 0.5
