"""LLM recommenders through the shared CLI pipeline, on the tiny-random backbone."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch

from cprec_recbole.builtin.prompt_templates import CHATREC
from cprec_recbole.command import build_config, setup
from cprec_recbole.compare import compare, read_ranks
from cprec_recbole.compat import load_checkpoint
from cprec_recbole.llm.prompts import render
from cprec_recbole.llm.sft import hybrid_probability
from cprec_recbole.models.morec import MoRec
from cprec_recbole.pipeline import RunSpec, reuse_or_run, run_pipeline, valid_metrics
from cprec_recbole.quick_start import run
from tests.reported_metrics import assert_metrics_follow_from_ranks


@pytest.fixture
def llm_overrides(tiny_base):
    return {
        **tiny_base,
        "llm_backbone": "tiny-random",
        "sft_samples": 48,
        "valid_users": 8,
        "eval_users": 12,
        "epochs": 2,
        "micro_batch_size": 8,
        "train_batch_size": 8,
        "rec_model_overrides": {"epochs": 1, "hidden_size": 16, "inner_size": 32, "n_layers": 1},
    }


def test_curriculum_probability_grows_linearly_and_reaches_one_at_the_last_step():
    probabilities = [hybrid_probability(step, 10) for step in range(10)]
    assert probabilities[0] == 0.0 and probabilities[-1] == 1.0
    assert all(b > a for a, b in itertools.pairwise(probabilities))


def test_tiny_random_brings_the_tiny_budget_unless_overridden(plugins):
    config = build_config("LLaRA", "Game", plugins, overrides={"llm_backbone": "tiny-random"})
    assert config["sft_samples"] == 256 and config["epochs"] == 1
    config = build_config(
        "LLaRA", "Game", plugins, overrides={"llm_backbone": "tiny-random", "epochs": 3}
    )
    assert config["epochs"] == 3
    assert build_config("SASRec", "Game", plugins)["epochs"] == 50  # profiles are LLM-only


def test_llara_runs_end_to_end_and_its_stages_are_reused(llm_overrides, caplog):
    caplog.set_level("INFO")
    first = run("LLaRA", "Tiny", overrides=llm_overrides)
    assert first["test"]["users"] == 12
    assert_metrics_follow_from_ranks(first)
    saved = Path(llm_overrides["output_dir"])
    (sft,) = saved.glob("sft/*/manifest.json")
    epochs = json.loads(sft.read_text())["metrics"]["epochs"]
    assert len(epochs) == 2 and epochs[-1]["hybrid_probability"] == 1.0
    assert all(e["train_samples_per_s"] > 0 and e["peak_memory_mb"] > 0 for e in epochs)
    caplog.clear()
    again = run("LLaRA", "Tiny", overrides=llm_overrides)
    assert again["test"] == first["test"] and again["stages"] == first["stages"]
    assert "stage eval: reusing" in caplog.text and "the run's result" in caplog.text
    assert "stage sft: reusing" not in caplog.text  # its result is read, nothing loaded
    caplog.clear()
    forced = run("LLaRA", "Tiny", overrides=llm_overrides, force=["eval"])
    assert "stage eval: building" in caplog.text and "stage sft: reusing" in caplog.text
    assert forced["test"] == first["test"]  # reloaded LoRA + projector score the same
    caplog.clear()
    unmerged = run("LLaRA", "Tiny", overrides={**llm_overrides, "merge_lora": False})
    assert "stage eval: building" in caplog.text and "stage sft: reusing" in caplog.text
    assert unmerged["test"] == first["test"]  # folding LoRA into fp32 weights changes no rank
    caplog.clear()
    run("LLaRA", "Tiny", overrides={**llm_overrides, "score_rule": "distinct_prefix"})
    assert "stage eval: building" in caplog.text and "stage sft: reusing" in caplog.text
    shutil.rmtree(first["stages"]["rec_model"])  # pruned, or the eval folder copied elsewhere
    config, plugins, _ = setup("LLaRA", "Tiny", overrides=llm_overrides)
    trial = RunSpec("a search's trial: up to the step it validates", "LLaRA", config, until="sft")
    valid = json.loads(sft.read_text())["metrics"]["best_valid"]
    assert valid_metrics(reuse_or_run(trial, plugins), "sft") == valid
    assert not Path(first["stages"]["rec_model"]).exists()  # read, not rebuilt
    shutil.rmtree(first["stages"]["sft"])
    pruned = run("LLaRA", "Tiny", overrides=llm_overrides)
    assert pruned["test"] == first["test"] and not Path(first["stages"]["sft"]).exists()


def test_sft_holdout_trains_on_the_targets_its_sasrec_never_saw(llm_overrides, plugins):
    config, plugins, _ = setup(
        "LLaRA", "Tiny", overrides={**llm_overrides, "sft_holdout": 1, "sft_samples": None}
    )
    run = run_pipeline("LLaRA", config, plugins, until="sasrec")
    sasrec = json.loads((run.folders["rec_model"] / "manifest.json").read_text())
    assert sasrec["config"]["train_holdout"] == 1  # the SASRec of its prompts: without them
    windows = run.recommender().train_windows()
    last_trained = {user: seq[-3] for user, seq in run.data.sequences.items()}
    assert len(windows) == 60  # one per user: its last training item
    assert all(last_trained[u] == t for u, t in zip(windows["user_id"], windows["target"]))
    assert windows["user_id"].is_unique


def test_embedding_model_gives_hybrid_prompts_morecs_text_vectors(llm_overrides, plugins):
    small = {"epochs": 1, "hidden_size": 16, "inner_size": 32, "n_layers": 1}
    overrides = {**llm_overrides, "embedding_model": "MoRec", "rec_model_overrides": small}
    config, plugins, _ = setup("LLaRA", "Tiny", overrides=overrides)
    steps = run_pipeline("LLaRA", config, plugins, until="sasrec")
    folder = steps.folders["rec_model"]
    rec = json.loads((folder / "manifest.json").read_text())["config"]
    assert rec["model"] == "MoRec" and rec["hidden_size"] == 16 and rec["item_text_stage"]
    state = load_checkpoint(folder / "model.pth")["state_dict"]
    table = steps.recommender().item_embeddings()
    assert torch.equal(table, MoRec.item_table(state)) and table.shape[1] == 16
    result = run("LLaRA", "Tiny", overrides=overrides)  # SFT and eval on those rows
    assert result["test"]["users"] == 12 and result["folder"] != str(folder)
    assert_metrics_follow_from_ranks(result)


def test_zero_shot_uses_no_rec_model_and_reads_the_same_candidates(llm_overrides, tiny_overrides):
    zero = run("LLaMA2ZeroShot", "Tiny", overrides=llm_overrides)
    sasrec = run("SASRec", "Tiny", overrides={**tiny_overrides, "epochs": 1})
    assert zero["candidates_sha256"] == sasrec["candidates_sha256"]
    assert zero["valid"] is None
    assert_metrics_follow_from_ranks(zero)
    assert not list(Path(llm_overrides["output_dir"]).glob("sft/*"))


def test_chatrec_asks_with_chat_recs_prompt_on_the_same_candidates(llm_overrides):
    prompt = render(CHATREC, ["Halo, Reach", "Doom"], ["Myst", "Halo, Reach"], "game")
    assert prompt == (
        "I want you to act as a recommender system. The user has bought these games, oldest "
        "first: Halo, Reach; Doom. The candidate games are: Myst; Halo, Reach. Based on the "
        "user's history, recommend the one candidate game the user is most likely to buy next. "
        "The answer is"
    )
    chat = run("ChatRec", "Tiny", overrides=llm_overrides)
    zero = run("LLaMA2ZeroShot", "Tiny", overrides=llm_overrides)
    assert chat["candidates_sha256"] == zero["candidates_sha256"]
    assert chat["folder"] != zero["folder"] and chat["valid"] is None
    keys = json.loads((Path(chat["folder"]) / "manifest.json").read_text())["config"]
    assert [t["text"] for t in keys["templates"]] == [CHATREC.text]
    assert_metrics_follow_from_ranks(chat)


def test_eval_item_embeddings_rebuild_only_the_eval_stage(llm_overrides, caplog):
    caplog.set_level("INFO")
    trained = run("LLaRA", "Tiny", overrides=llm_overrides)
    ranks = {"trained": (Path(trained["folder"]) / "test_ranks.tsv").read_text()}
    for mode in ("permuted", "none"):
        caplog.clear()
        out = run("LLaRA", "Tiny", overrides={**llm_overrides, "eval_item_embeddings": mode})
        assert "stage eval: building" in caplog.text and "stage sft: reusing" in caplog.text
        assert out["item_embeddings"] == mode and out["folder"] != trained["folder"]
        assert_metrics_follow_from_ranks(out)
        ranks[mode] = (Path(out["folder"]) / "test_ranks.tsv").read_text()
    assert trained["item_embeddings"] == "trained"
    assert ranks["none"] != ranks["trained"]  # the text-only prompt scores differently


def test_eval_valid_users_ranks_valid_users_too_for_choosing_arms(llm_overrides, caplog):
    caplog.set_level("INFO")
    trained = run("LLaRA", "Tiny", overrides=llm_overrides)
    caplog.clear()
    out = run("LLaRA", "Tiny", overrides={**llm_overrides, "eval_valid_users": 6})
    assert "stage eval: building" in caplog.text and "stage sft: reusing" in caplog.text
    folder = Path(out["folder"])
    assert (folder / "test_ranks.tsv").read_text() == (
        Path(trained["folder"]) / "test_ranks.tsv"
    ).read_text()
    valid = read_ranks(folder, "valid")
    assert len(valid) == 6 and "valid_eval" not in trained
    assert out["valid_eval"]["users"] == 6
    assert out["valid_eval"]["hr@1"] == pytest.approx((valid == 0).mean())
    table = compare(folder, Path(trained["folder"]), [1], "test")  # the same test ranks
    assert table["diff"].tolist() == [0.0]
    with pytest.raises(FileNotFoundError, match="valid_ranks.tsv not found"):
        compare(folder, Path(trained["folder"]), [1], "valid")
