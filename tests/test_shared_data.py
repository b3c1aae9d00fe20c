"""Integration on the real Amazon Game data in ../shared/data (skipped where it is absent)."""

from __future__ import annotations

import pytest

from cprec_recbole.command import build_config
from cprec_recbole.data.prepare import prepare
from cprec_recbole.experiments import load_experiment
from cprec_recbole.pipeline import run_pipeline
from cprec_recbole.run_config import RunConfig
from tests.conftest import REPO

SHARED = REPO.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(
    not (SHARED / "Game" / "Game.inter").is_file(), reason=f"{SHARED}/Game not present"
)


def test_game_sample_is_paper_sized_and_its_candidates_avoid_every_user_item(tmp_path, plugins):
    overrides = {"data_path": str(SHARED), "output_dir": str(tmp_path)}
    data = prepare(build_config("SASRec", "Game", plugins, overrides=overrides), plugins)
    users, items = data.inter["user_id"].nunique(), data.inter["item_id"].nunique()
    assert 4000 <= users <= 4564 and 3000 <= items <= 5000
    assert (data.inter.groupby("user_id").size() >= 3).all()
    seen = data.inter.groupby("user_id")["item_id"].agg(set)
    test = data.eval_rows("test")
    assert len(test) == users
    for user, target, candidates in zip(test["user_id"], test["target"], test["candidates"]):
        assert len(set(candidates)) == 20
        assert set(candidates) & seen[user] == {target}


def test_learning_curve_ends_at_every_game_training_window(tmp_path, plugins):
    overrides = {"data_path": str(SHARED), "output_dir": str(tmp_path), "sft_samples": None}
    config = RunConfig(build_config("LLaRA", "Game", plugins, overrides=overrides))
    windows = run_pipeline("LLaRA", config, plugins, until="data").recommender().train_windows()
    curve = plugins.experiments.get("learning_curve")
    curve = load_experiment("learning_curve", curve, plugins.models.names())
    assert max(a.overrides.get("sft_samples", 0) for a in curve.arms) == len(windows) == 11307
