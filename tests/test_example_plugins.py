"""The example plugins in ``plugins/`` do what their docstrings promise, loaded as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llm_fixtures import (  # noqa: F401  (pytest fixtures)
    ITEM_INDEX,
    TITLES,
    one_thread_fixture,
    samples,
    tiny_tokenizer_fixture,
)

from cprec_recbole.command import build_config
from cprec_recbole.config_check import check_config
from cprec_recbole.errors import ConfigError
from cprec_recbole.llm.batching import encode_batch
from cprec_recbole.llm.cpt import CPT_STAGE, cpt_declared
from cprec_recbole.llm.prompts import render
from cprec_recbole.llm.schedulers import learning_rates, schedule_keys
from cprec_recbole.plugins import load_plugins
from cprec_recbole.quick_start import run
from cprec_recbole.run_config import RunConfig
from cprec_recbole.stages import stage_folder

REPO = Path(__file__).resolve().parents[1]
SHORT_PROMPT = REPO / "plugins" / "short_prompt.py"
STEP_DECAY = REPO / "plugins" / "step_decay.py"
PEAK = 1e-3


@pytest.fixture(scope="module")
def examples():
    return load_plugins([SHORT_PROMPT, STEP_DECAY])


def step_decay_rate(step: int, warmup: int, total: int, gamma: float, period_ratio: float) -> float:
    """The plugin's documented curve, written out independently of it."""
    if step < warmup:
        return PEAK * (step + 1) / warmup
    period = max(1, round(period_ratio * total))
    return PEAK * gamma ** ((step - warmup) // period)


# ------------------------------------------------------------------ short_prompt


def test_short_prompt_registers_a_hybrid_and_a_text_template_under_its_file(examples):
    for name in ("short", "short_text"):
        assert examples.prompt_templates.owners[name] == str(SHORT_PROMPT)
    assert examples.prompt_templates.get("short").special_tokens == ("[HistoryEmb]", "[CansEmb]")
    assert examples.prompt_templates.get("short_text").special_tokens == ()


def test_short_text_renders_titles_joined_by_semicolons_with_the_dataset_noun(examples):
    template = examples.prompt_templates.get("short_text")
    prompt = render(template, ["Red Castle", "Blue River, Deluxe"], ["Green Hills", "Moon"], "game")
    assert prompt == (
        "Bought: Red Castle; Blue River, Deluxe. Candidates: Green Hills; Moon. The next game is"
    )


def test_short_marks_every_history_and_candidate_item_with_its_placeholder(examples):
    template = examples.prompt_templates.get("short")
    prompt = render(template, ["Red Castle"], ["Green Hills", "Moon"], "item")
    assert prompt == (
        "Bought: Red Castle [HistoryEmb]. Candidates: Green Hills [CansEmb]; Moon [CansEmb]. "
        "The next item is"
    )


def test_short_placeholders_line_up_with_history_then_candidates_when_encoded(
    examples, tiny_tokenizer
):
    batch_samples = samples(3)
    batch = encode_batch(
        tiny_tokenizer,
        examples.prompt_templates.get("short"),
        batch_samples,
        TITLES,
        ITEM_INDEX,
        "game",
        with_answer=True,
    )
    expected = [ITEM_INDEX[i] for s in batch_samples for i in s.history + s.candidates]
    assert batch.slot_items.tolist() == expected


# ------------------------------------------------------------------ step_decay


def test_step_decay_registers_under_its_name_and_declares_its_keys(examples):
    factory = examples.schedulers.get("step_decay")
    assert examples.schedulers.owners["step_decay"] == str(STEP_DECAY)
    assert schedule_keys(factory) == ("decay_gamma", "decay_period")


@pytest.mark.parametrize("step", [0, 3, 4, 13, 14, 23, 24, 39])
def test_step_decay_rate_warms_up_then_drops_by_gamma_every_period(examples, step):
    factory = examples.schedulers.get("step_decay")
    config = {"decay_gamma": 0.3, "decay_period": 0.25}  # 40 steps: a drop every 10
    rates = learning_rates(factory, {"warmup": 4, "total": 40}, config, base_lr=PEAK)
    assert rates[step] == pytest.approx(step_decay_rate(step, 4, 40, 0.3, 0.25), rel=1e-12)


def test_step_decay_uses_its_declared_defaults_when_the_config_lacks_them(examples):
    factory = examples.schedulers.get("step_decay")
    rates = learning_rates(factory, {"total": 8}, {}, base_lr=PEAK)
    assert rates.tolist() == pytest.approx([step_decay_rate(s, 0, 8, 0.5, 0.25) for s in range(8)])


def test_step_decay_rejects_a_gamma_outside_0_1(examples):
    factory = examples.schedulers.get("step_decay")
    with pytest.raises(ValueError, match="decay_gamma"):
        learning_rates(factory, {"total": 8}, {"decay_gamma": 0.0}, base_lr=PEAK)


def test_step_decay_keys_join_the_cpt_stage_key(examples):
    config = RunConfig(
        {"cpt_scheduler": "step_decay", "cpt_template": "unified", "decay_gamma": 0.3}
    )
    declared = cpt_declared(config, examples, Path("saved/corpus/abc"))
    keys = CPT_STAGE.keys(config, declared["inputs"], declared["derived"], declared["extra_reads"])
    assert (keys["decay_gamma"], keys["decay_period"]) == (0.3, None)
    other = config.updated(decay_gamma=0.5, output_dir="saved")
    folder = stage_folder(CPT_STAGE, config.updated(output_dir="saved"), **declared)
    assert folder != stage_folder(CPT_STAGE, other, **declared)


def test_step_decay_keys_pass_the_config_check_only_with_the_plugin(examples, plugins):
    overrides = {"lr_scheduler": "step_decay", "decay_gamma": 0.3}
    check_config(
        build_config("LLaRA", "Game", examples, overrides=overrides), examples, (), overrides
    )
    builtin_only = build_config("LLaRA", "Game", plugins, overrides=overrides)
    with pytest.raises(ConfigError, match="unknown config key 'decay_gamma'"):
        check_config(builtin_only, plugins, (), overrides)


# ------------------------------------------------------------------ both, end to end


def test_llara_trains_and_evaluates_with_both_example_plugins(
    tiny_data, tmp_path, caplog, one_thread
):
    caplog.set_level("INFO")
    overrides = {
        "data_path": str(tiny_data),
        "output_dir": str(tmp_path / "saved"),
        "show_progress": False,
        "llm_backbone": "tiny-random",
        "sft_samples": 32,
        "valid_users": 4,
        "eval_users": 4,
        "epochs": 1,
        "micro_batch_size": 8,
        "train_batch_size": 8,
        "learning_rate": PEAK,
        "rec_model_overrides": {"epochs": 1, "hidden_size": 16, "inner_size": 32, "n_layers": 1},
        "prompt_template": "short",
        "text_template": "short_text",
        "lr_scheduler": "step_decay",
        "decay_gamma": 0.3,
    }
    results = run("LLaRA", "Tiny", overrides=overrides, plugin_files=[SHORT_PROMPT, STEP_DECAY])
    assert results["test"]["users"] == 4
    (manifest,) = Path(overrides["output_dir"]).glob("sft/*/manifest.json")
    manifest = json.loads(manifest.read_text())
    assert (manifest["config"]["decay_gamma"], manifest["config"]["decay_period"]) == (0.3, None)
    assert [t["separator"] for t in manifest["config"]["templates"]] == ["; ", "; "]
    total = manifest["metrics"]["total_steps"]
    last = step_decay_rate(total, int(0.05 * total), total, 0.3, 0.25)  # lr after the last step
    assert f"sft: step {total}/{total}" in caplog.text and f"lr {last:.3e}" in caplog.text
