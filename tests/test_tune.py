"""Ray Tune search: grid, selection on valid metrics, shared stages, one test evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cprec_recbole.errors import ConfigError
from cprec_recbole.quick_start import run
from cprec_recbole.tune import grid, selection_score


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray for the module's searches (starting one costs seconds)."""
    import ray

    yield
    ray.shutdown()


def test_grid_lists_every_combination_in_order():
    space = {"learning_rate": [1e-3, 1e-4], "seed": [1, 2]}
    assert grid(space) == [
        {"learning_rate": 1e-3, "seed": 1},
        {"learning_rate": 1e-3, "seed": 2},
        {"learning_rate": 1e-4, "seed": 1},
        {"learning_rate": 1e-4, "seed": 2},
    ]
    assert grid({"epochs": 3}) == [{"epochs": 3}]
    with pytest.raises(ConfigError, match="tune_space must map"):
        grid([1e-3])


def test_selection_multiplies_hr1_by_valid_ratio_where_answers_can_be_invalid():
    assert selection_score({"hr@1": 0.4}) == 0.4
    assert selection_score({"hr@1": 0.4, "valid_ratio": 0.5}) == 0.2


def test_a_model_that_trains_nothing_is_refused_before_ray_starts(tiny_base):
    overrides = {**tiny_base, "llm_backbone": "tiny-random", "tune": True}
    with pytest.raises(ConfigError, match="model LLaMA2ZeroShot trains nothing"):
        run("LLaMA2ZeroShot", "Tiny", overrides=overrides)
    assert not (Path(tiny_base["output_dir"]) / "tune").exists()


def test_plan_of_a_search_lists_the_shared_stages_once_then_each_trials_own(tiny_sft, capsys):
    from cprec_recbole.cli import main

    searched = {**tiny_sft, "tune": True, "tune_space": "{learning_rate: [0.001, 0.003]}"}
    args = [f"--{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in searched.items()]
    assert main(["--model=LLaRA", "--dataset=Tiny", "--plan", *args]) == 0
    assert not Path(tiny_sft["output_dir"]).exists()
    groups = capsys.readouterr().out.strip().split("\n\n")
    stages = {g.splitlines()[0]: [r.split()[0] for r in g.splitlines()[2:]] for g in groups}
    assert stages == {
        "shared (built once, before the runs):": ["data", "rec_model"],
        "trial 0 {'learning_rate': 0.001}:": ["sft"],  # a trial stops at its validating step
        "trial 1 {'learning_rate': 0.003}:": ["sft"],
    }


def test_sasrec_search_picks_the_learning_rate_that_learns(tiny_overrides):
    """1e-7 leaves SASRec at chance on Tiny's cyclic walks, 1e-2 learns them: the answer is known."""
    overrides = {
        **tiny_overrides,
        "epochs": 15,
        "tune": True,
        "tune_space": {"learning_rate": [1e-7, 1e-2]},
        "tune_cpus_per_trial": 1,  # two trials side by side on two cores
    }
    results = run("SASRec", "Tiny", overrides=overrides)
    summary = results["tune"]
    assert summary["chosen"] == {"learning_rate": 1e-2} and summary["trials"] == 2
    table = pd.read_csv(Path(summary["tune_folder"]) / "trials.csv")
    assert table["learning_rate"].tolist() == [1e-7, 1e-2]
    assert table["score"][1] > 0.5 > table["score"][0]
    folders = list(Path(tiny_overrides["output_dir"]).glob("rec_model/*/manifest.json"))
    rates = sorted(json.loads(f.read_text())["config"]["learning_rate"] for f in folders)
    assert rates == [1e-7, 1e-2]  # one stage folder per trial, none shared
    assert results["test"]["hr@1"] > 0.5 and summary["test"] == results["test"]
    assert (
        "chosen: {'learning_rate': 0.01}"
        in (Path(summary["tune_folder"]) / "trials.md").read_text()
    )


def test_llara_search_validates_each_trial_and_tests_only_the_chosen(tiny_sft, tiny_base):
    overrides = {
        **tiny_sft,
        "rec_model_overrides": {"epochs": 1, "hidden_size": 16, "inner_size": 32, "n_layers": 1},
        "tune": True,
        "tune_space": {"learning_rate": [1e-3, 3e-3]},
    }
    results = run("LLaRA", "Tiny", overrides=overrides)
    saved = Path(tiny_base["output_dir"])
    assert len(list(saved.glob("sft/*/manifest.json"))) == 2  # a folder per trial
    assert len(list(saved.glob("rec_model/*/manifest.json"))) == 1  # shared, built once
    assert len(list(saved.glob("eval/*/manifest.json"))) == 1  # test: the chosen trial only
    table = pd.read_csv(Path(results["tune"]["tune_folder"]) / "trials.csv")
    best = table.loc[table["score"].idxmax(), "learning_rate"]
    assert results["tune"]["chosen"] == {"learning_rate": best}
