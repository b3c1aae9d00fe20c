"""Paired comparison of two models' per-user ranks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cprec_recbole.compare import main, paired_hits
from cprec_recbole.evaluation import INVALID


def test_paired_hits_counts_discordant_users_and_tests_them():
    a = np.array([0, 0, 0, 0, 0, 0, 3, INVALID])
    b = np.array([0, 2, 2, 2, 2, 2, 0, 0])
    out = paired_hits(a, b, k=1)
    assert (out["hr_a"], out["hr_b"]) == (6 / 8, 3 / 8)
    assert (out["only_a"], out["only_b"]) == (5, 2)
    assert out["diff"] == pytest.approx(3 / 8)
    assert out["sign_test_p"] == pytest.approx(2 * (1 + 7 + 21) / 2**7)  # P(X <= 2), X ~ B(7, .5)
    assert 0 < out["t_test_p"] < 1
    assert paired_hits(a, b, k=5)["only_b"] == 1  # INVALID is a miss at every k


def write_ranks(folder, users, ranks):
    folder.mkdir()
    pd.DataFrame({"user_id": users, "rank": ranks}).to_csv(
        folder / "test_ranks.tsv", sep="\t", index=False
    )
    return folder


def test_compare_reads_two_model_folders_on_their_shared_users(tmp_path, capsys):
    a = write_ranks(tmp_path / "a", ["u1", "u2", "u3"], [0, 1, 0])
    b = write_ranks(tmp_path / "b", ["u2", "u3", "u4"], [0, 4, 0])
    assert main([str(a), str(b), "--k", "1", "--csv", str(tmp_path / "c.csv")]) == 0
    table = pd.read_csv(tmp_path / "c.csv")
    assert table.loc[0, ["users", "only_a", "only_b"]].tolist() == [2, 1, 1]
    assert "only_a" in capsys.readouterr().out


def test_compare_names_the_missing_ranks_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing/test_ranks\.tsv not found"):
        main([str(tmp_path / "nothing"), str(tmp_path / "nothing")])
