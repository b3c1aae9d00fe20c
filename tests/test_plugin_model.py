"""A model from a plugin file (``plugins/text_llara.py``) runs, tunes, plans and evaluates through
its declared pipeline, like the built-in ones; constructors train nothing."""

from __future__ import annotations

import json
from pathlib import Path

from cprec_recbole.command import setup
from cprec_recbole.pipeline import pipeline_of, run_pipeline, validating_step
from cprec_recbole.quick_start import plan, run

TEXT_LLARA = Path(__file__).resolve().parents[1] / "plugins" / "text_llara.py"


def stage_kinds(saved: Path) -> dict[str, int]:
    found = [json.loads(p.read_text())["stage"] for p in saved.glob("*/*/manifest.json")]
    return {kind: found.count(kind) for kind in sorted(set(found))}


def test_a_plugin_model_is_planned_trained_and_evaluated_by_its_pipeline(tiny_sft):
    config, plugins, _ = setup("TextLLaRA", "Tiny", overrides=tiny_sft, plugin_files=[TEXT_LLARA])
    ((_, entries),) = plan(config, plugins)
    assert [(e.stage, e.state) for e in entries] == [
        ("data", "to build"),
        ("sft", "to build"),
        ("eval", "to build"),
    ]
    results = run("TextLLaRA", "Tiny", overrides=tiny_sft, plugin_files=[TEXT_LLARA])
    saved = Path(tiny_sft["output_dir"])
    assert stage_kinds(saved) == {"data": 1, "eval": 1, "sft": 1}  # no SASRec: not declared
    assert list(results["stages"]) == ["data", "sft", "eval"]
    assert results["test"]["users"] == 12 and results["valid"]["users"] == 8
    sft = json.loads((Path(results["stages"]["sft"]) / "manifest.json").read_text())
    assert sft["config"]["rec_model_stage"] is None and sft["config"]["model"] == "TextLLaRA"
    ((_, again),) = plan(config, plugins)
    assert {e.state for e in again} == {"cached"}


def test_a_plugin_model_is_tuned_on_valid_with_the_shared_stages_built_once(tiny_sft):
    import ray

    searched = {**tiny_sft, "tune": True, "tune_space": {"learning_rate": [1e-3, 3e-3]}}
    try:
        results = run("TextLLaRA", "Tiny", overrides=searched, plugin_files=[TEXT_LLARA])
    finally:
        ray.shutdown()
    assert stage_kinds(Path(tiny_sft["output_dir"])) == {"data": 1, "eval": 1, "sft": 2}
    assert results["tune"]["chosen"]["learning_rate"] in (1e-3, 3e-3)
    assert results["tune"]["test"] == results["test"]


def test_constructing_a_model_builds_no_stage(tiny_sft):
    config, plugins, _ = setup("CPRec", "Tiny", overrides=tiny_sft, plugin_files=[TEXT_LLARA])
    cprec = ("data", "sasrec", "corpus", "cpt", "sft", "eval")
    assert pipeline_of(plugins.models.get("CPRec")) == cprec
    assert validating_step(plugins.models.get("LLaMA2ZeroShot")) is None
    run = run_pipeline("CPRec", config, plugins, until="data")
    model = run.recommender()  # the CPRec object, from the data stage alone
    assert model.rec_folder is None and model.cpt_folder is None
    assert stage_kinds(Path(tiny_sft["output_dir"])) == {"data": 1}
