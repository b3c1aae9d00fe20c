"""Paired comparison of two models' per-user ranks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cprec_recbole.compare import compare, hit_means, main, paired_hits
from cprec_recbole.evaluation import INVALID


def hits(ranks: np.ndarray, k: int) -> np.ndarray:
    return hit_means([pd.Series(ranks)], k).to_numpy()


def test_paired_hits_counts_discordant_users_and_tests_them():
    a = np.array([0, 0, 0, 0, 0, 0, 3, INVALID])
    b = np.array([0, 2, 2, 2, 2, 2, 0, 0])
    out = paired_hits(hits(a, 1), hits(b, 1), k=1)
    assert (out["hr_a"], out["hr_b"]) == (6 / 8, 3 / 8)
    assert (out["only_a"], out["only_b"]) == (5, 2)
    assert out["diff"] == pytest.approx(3 / 8)
    assert out["sign_test_p"] == pytest.approx(2 * (1 + 7 + 21) / 2**7)  # P(X <= 2), X ~ B(7, .5)
    assert 0 < out["t_test_p"] < 1
    assert paired_hits(hits(a, 5), hits(b, 5), k=5)["only_b"] == 1  # INVALID misses at every k


def test_identical_hit_vectors_are_not_significant():
    ranks = np.array([0, 2, INVALID, 1, 0, 7])
    for k in (1, 3, 5):
        out = paired_hits(hits(ranks, k), hits(ranks, k), k=k)
        assert (out["only_a"], out["only_b"], out["diff"]) == (0, 0, 0.0)
        assert out["sign_test_p"] == out["t_test_p"] == 1.0


SHA_TEST = "a" * 64


def write_ranks(folder, users, ranks, test_sha=SHA_TEST):
    """A finished model folder: test_ranks.tsv and results.json with its candidate hashes."""
    folder.mkdir()
    pd.DataFrame({"user_id": users, "rank": ranks}).to_csv(
        folder / "test_ranks.tsv", sep="\t", index=False
    )
    digests = {"valid": "v" * 64, "test": test_sha} if test_sha else {}
    (folder / "results.json").write_text(json.dumps({"candidates_sha256": digests}))
    return folder


def test_compare_reads_two_model_folders_on_their_shared_users(tmp_path, capsys):
    a = write_ranks(tmp_path / "a", ["u1", "u2", "u3"], [0, 1, 0])
    b = write_ranks(tmp_path / "b", ["u2", "u3", "u4"], [0, 4, 0])
    assert main([str(a), str(b), "--k", "1", "--csv", str(tmp_path / "c.csv")]) == 0
    table = pd.read_csv(tmp_path / "c.csv")
    assert table.loc[0, ["users", "only_a", "only_b"]].tolist() == [2, 1, 1]
    assert "only_a" in capsys.readouterr().out


def test_seeds_given_comma_separated_are_averaged_per_user(tmp_path, capsys):
    users = ["u1", "u2", "u3", "u4"]
    a1 = write_ranks(tmp_path / "a1", users, [0, 0, 1, 1])
    a2 = write_ranks(tmp_path / "a2", users, [0, 1, 1, 0])
    b = write_ranks(tmp_path / "b", users, [1, 1, 1, 1])
    assert main([f"{a1},{a2}", str(b), "--k", "1", "--csv", str(tmp_path / "c.csv")]) == 0
    row = pd.read_csv(tmp_path / "c.csv").iloc[0]  # a's hits per user: 1, .5, 0, .5
    assert (row["hr_a"], row["hr_b"], row["diff"]) == (0.5, 0.0, 0.5)
    assert (row["only_a"], row["only_b"]) == (3, 0)
    assert "averaged over 2 seeds" in capsys.readouterr().out
    other = write_ranks(tmp_path / "a3", users, [0, 0, 0, 0], test_sha="c" * 64)
    assert main([f"{a1},{other}", str(b)]) == 2
    assert "different test candidate sets" in capsys.readouterr().err


def test_two_folders_with_the_same_ranks_report_no_significance(tmp_path):
    users, ranks = ["u1", "u2", "u3", "u4"], [0, 3, 1, INVALID]
    a, b = write_ranks(tmp_path / "a", users, ranks), write_ranks(tmp_path / "b", users, ranks)
    table = compare(a, b, [1, 3, 5])
    assert (table["sign_test_p"] == 1.0).all() and (table["t_test_p"] == 1.0).all()


def test_compare_refuses_folders_evaluated_on_different_candidate_sets(tmp_path, capsys):
    a = write_ranks(tmp_path / "a", ["u1", "u2"], [0, 1])
    b = write_ranks(tmp_path / "b", ["u1", "u2"], [0, 1], test_sha="b" * 64)
    with pytest.raises(ValueError, match="different test candidate sets") as error:
        compare(a, b, [1])
    assert all(str(x) in str(error.value) for x in (a, b, SHA_TEST, "b" * 64))
    assert main([str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and SHA_TEST in err


def test_compare_names_the_folder_whose_results_lack_the_test_candidates_hash(tmp_path, capsys):
    a = write_ranks(tmp_path / "a", ["u1"], [0])
    b = write_ranks(tmp_path / "b", ["u1"], [0], test_sha=None)
    assert main([str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert f"{b / 'results.json'} records no candidates_sha256 for the test split" in err
    assert "rerun that model" in err
    (b / "results.json").unlink()
    assert main([str(b), str(a)]) == 2
    assert f"{b / 'results.json'} records no candidates_sha256" in capsys.readouterr().err


def test_compare_names_the_missing_ranks_file(tmp_path, capsys):
    assert main([str(tmp_path / "nothing"), str(tmp_path / "nothing")]) == 2
    assert "nothing/test_ranks.tsv not found" in capsys.readouterr().err
