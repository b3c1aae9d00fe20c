"""Issue 26's diagnostics on hand-made ranks: HR@1 and first picks by candidate position, and the
agreement of first picks with a reference model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cprec_recbole.cli import main
from cprec_recbole.compare import main as compare_main
from cprec_recbole.diagnostics import (
    diagnostics_section,
    position_bucket,
    position_tables,
    top1_agreement,
)
from cprec_recbole.evaluation import INVALID
from cprec_recbole.fusion import main as fusion_main
from cprec_recbole.results import write_ranks
from tests.conftest import TINY_SIZES
from tests.reported_metrics import assert_metrics_follow_from_ranks
from tests.test_cpt import cpt_overrides  # noqa: F401 (a fixture)


def ranks(rows: list[tuple[str, int, int, int]]) -> pd.DataFrame:
    """(user, rank, positive, top1) rows, indexed by user as ``read_positions`` returns them."""
    frame = pd.DataFrame(rows, columns=["user_id", "rank", "positive", "top1"])
    return frame.set_index("user_id")


def test_position_buckets_are_one_based_and_width_wide():
    positions = pd.Series([0, 3, 4, 19])
    assert position_bucket(positions, 4).tolist() == ["1-4", "1-4", "5-8", "17-20"]
    assert position_bucket(positions, 1).tolist() == ["1", "4", "5", "20"]


def test_hr1_by_position_and_first_picks_on_the_users_every_arm_ranked():
    # the LLM always picks the first slot: it hits exactly where the positive is first
    llm = ranks([("a", 0, 0, 0), ("b", 3, 5, 0), ("c", 1, 6, 0), ("d", INVALID, 1, INVALID)])
    sasrec = ranks([("a", 1, 0, 2), ("b", 0, 5, 5), ("c", 0, 6, 6), ("d", 0, 1, 1), ("e", 0, 9, 9)])
    hr1, picks = position_tables({"LLM": [llm], "SASRec": [sasrec]}, width=4)
    assert hr1.index.tolist() == ["1-4", "5-8"]  # user e is not ranked by the LLM: left out
    assert hr1["positives"].tolist() == [0.5, 0.5]
    assert hr1["LLM"].tolist() == [0.5, 0.0]
    assert hr1["SASRec"].tolist() == [0.5, 1.0]
    assert picks["LLM"].tolist() == [0.75, 0.0]  # d answered nothing: no pick anywhere
    assert picks["SASRec"].tolist() == [0.5, 0.5]


def test_two_seeds_are_pooled_user_by_user():
    seed0 = ranks([("a", 0, 0, 0), ("b", 2, 4, 1)])
    seed1 = ranks([("a", 1, 0, 3), ("b", 0, 4, 4)])
    hr1, _ = position_tables({"LLM": [seed0, seed1]}, width=4)
    assert hr1["LLM"].to_dict() == {"1-4": 0.5, "5-8": 0.5}


def test_top1_agreement_counts_same_candidates_and_hits_where_the_reference_hits():
    reference = ranks([("a", 0, 0, 0), ("b", 0, 5, 5), ("c", 2, 6, 3), ("d", 0, 1, 1)])
    arm = ranks([("a", 0, 0, 0), ("b", 1, 5, 2), ("c", 3, 6, 3), ("d", INVALID, 1, INVALID)])
    found = top1_agreement([arm], [reference])
    assert found["users"] == 4
    assert found["same top-1"] == 0.5  # a and c; an invalid answer agrees with nothing
    assert found["hits where it hits"] == pytest.approx(1 / 3)  # of a, b, d the arm hits a


def test_the_section_names_arms_whose_ranks_predate_the_position_columns(tmp_path):
    old, new, ref = tmp_path / "old", tmp_path / "new", tmp_path / "ref"
    for folder in (old, new, ref):
        folder.mkdir()
    write_ranks(old, pd.DataFrame({"user_id": ["a"], "rank": [0]}))
    write_ranks(new, ranks([("a", 0, 2, 2), ("b", 1, 7, 0)]).reset_index())
    write_ranks(ref, ranks([("a", 0, 2, 2), ("b", 0, 7, 7)]).reset_index())
    text = "\n".join(diagnostics_section({"old": [old], "new": [new], "SASRec": [ref]}, "SASRec"))
    assert "Left out of the diagnostics: old, whose test_ranks.tsv predates" in text
    assert "| position | positives | new | SASRec |" in text
    assert "| 1-4 | 0.5000 | 1.0000 | 1.0000 |" in text
    assert "| arm | users | same top-1 | hits where it hits |" in text
    assert "| new | 2 | 0.5000 | 0.5000 |" in text


# --------------------------------------------------------------------------- end to end


def test_the_diagnostics_experiment_reports_embedding_arms_positions_and_agreement(
    cpt_overrides,  # noqa: F811 (the fixture imported above)
    capsys,
):
    given = {**cpt_overrides, **TINY_SIZES["SASRec"], "epochs": 1}
    args = [f"--{k}={json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in given.items()]
    command = ["--experiment=diagnostics", "--dataset=Tiny", "--seeds=1", *args]
    assert main(command) == 0
    folder = Path(cpt_overrides["output_dir"]) / "experiments" / "diagnostics-Tiny"
    assert f"report: {folder / 'report.md'}" in capsys.readouterr().out
    rows = pd.read_csv(folder / "results.csv")
    saved = Path(cpt_overrides["output_dir"])
    assert len(list(saved.glob("sft/*/manifest.json"))) == 2  # one SFT per model, three evals
    assert len(list(saved.glob("eval/*/manifest.json"))) == 6
    for path in rows["folder"]:
        assert_metrics_follow_from_ranks(
            json.loads((Path(path) / "results.json").read_text()) | {"folder": path}
        )
    report = (folder / "report.md").read_text()
    for arm in ("LLaRA", "LLaRA permuted", "LLaRA text-only", "CPRec permuted", "SASRec"):
        assert f"| {arm} |" in report or f"| **{arm}** |" in report
    assert "Test HR@1 by the positive's position in the candidate list (12 users" in report
    assert "| position | positives | SASRec | LLaRA | LLaRA permuted |" in report
    assert "| 1-4 |" in report and "Left out" not in report
    assert "| arm | users | same top-1 | hits where it hits |" in report
    assert "| CPRec text-only | 12 |" in report

    # every folder lists each user's candidates in its order; RRF fuses SASRec's and LLaRA's
    folders = dict(zip(rows["arm"], rows["folder"], strict=True))
    for path in folders.values():
        ranks = pd.read_csv(Path(path) / "test_ranks.tsv", sep="\t", dtype={"order": str})
        orders = [[int(i) for i in o.split()] for o in ranks["order"]]
        assert [o[0] for o in orders] == ranks["top1"].tolist()
        assert [o.index(p) for o, p in zip(orders, ranks["positive"], strict=True)] == ranks[
            "rank"
        ].tolist()
    fused = saved / "fusion"
    assert fusion_main([folders["SASRec"], folders["LLaRA"], f"--out={fused}"]) == 0
    results = json.loads((fused / "results.json").read_text())
    assert results["test"]["users"] == 12 and 0 <= results["test"]["hr@1"] <= 1
    assert compare_main([str(fused), folders["SASRec"], "--k", "1"]) == 0
    assert fusion_main([folders["SASRec"], folders["SASRec"], f"--out={saved / 'same'}"]) == 0
    same = pd.read_csv(saved / "same" / "test_ranks.tsv", sep="\t", dtype={"user_id": str})
    sasrec = pd.read_csv(Path(folders["SASRec"]) / "test_ranks.tsv", sep="\t", dtype=str)
    assert same.set_index("user_id")["rank"].astype(str).to_dict() == {
        u: r for u, r in zip(sasrec["user_id"], sasrec["rank"], strict=True)
    }  # fusing a model with itself keeps its ranking

    # the report carries its LLM runs' eval folders; copied into a new output_dir (another
    # machine's), they are those runs, built: the experiment there builds only SASRec
    archived = folder / "stages"
    evals = sorted(Path(f).name for f in rows["folder"] if Path(f).parent.name == "eval")
    assert sorted(p.name for p in (archived / "eval").iterdir()) == evals and len(evals) == 6
    fresh = saved.parent / "elsewhere"
    shutil.copytree(archived, fresh)
    assert main([*command, f"--output_dir={fresh}"]) == 0
    assert not any(fresh.glob("sft/*")) and not any(fresh.glob("cpt/*"))
    again = pd.read_csv(fresh / "experiments" / "diagnostics-Tiny" / "results.csv")
    metrics = ["arm", "seed", "hr@1", "hr@5", "ndcg@5", "valid_ratio"]
    assert again[metrics].equals(rows[metrics])
    report = (fresh / "experiments" / "diagnostics-Tiny" / "report.md").read_text()
    assert report.count("| CPRec text-only | 12 |") == 1
