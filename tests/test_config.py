"""Layered config: overall -> model -> dataset -> files -> command line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cprec_recbole.cli import main
from cprec_recbole.command import build_config
from cprec_recbole.config import load_config, parse_overrides, read_yaml
from cprec_recbole.config_check import OWN_KEYS, RECBOLE_RUNTIME, check_config
from cprec_recbole.data.corpus import CORPUS
from cprec_recbole.data.prepare import DATA
from cprec_recbole.errors import ConfigError
from cprec_recbole.llm.cpt import CPT_STAGE
from cprec_recbole.llm.pipeline import EVAL, SFT
from cprec_recbole.llm.schedulers import schedule_keys
from cprec_recbole.text_encoder import ITEM_TEXT
from tests.conftest import REPO


def test_layers_apply_in_order_and_command_line_wins(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("learning_rate: 5e-4\nepochs: 7\n")
    config = load_config("CL4SRec", "Game", config_files=[extra], overrides={"epochs": 3})
    assert config["k_core"] == 3  # overall
    assert config["lmd"] == 0.1  # model
    assert config["user_sample_num"] == 4564  # dataset
    assert config["learning_rate"] == 5e-4  # file, read as a float
    assert config["epochs"] == 3  # command line


def test_command_line_values_are_typed_like_yaml():
    assert parse_overrides(["--lr=1e-3", "--on=true", "--ks=[1,3]", "--name=x"]) == {
        "lr": 1e-3,
        "on": True,
        "ks": [1, 3],
        "name": "x",
    }


def test_bad_arguments_and_yaml_name_the_culprit(tmp_path):
    with pytest.raises(ConfigError, match="'epochs'"):
        parse_overrides(["epochs"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"(?s)bad.yaml is not valid YAML.*line 2"):
        load_config("SASRec", "Game", config_files=[bad])


# ------------------------------------------------------------------ checking a run's config
def _error(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit code 2, return its one stderr line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_the_issues_bad_commands_end_in_one_line_and_touch_nothing_saved(capsys, tiny_overrides):
    saved = Path(tiny_overrides["output_dir"])
    (saved / "rec_model" / "abc").mkdir(parents=True)
    (saved / "rec_model" / "abc" / "results.json").write_text("{}")
    before = {p: p.stat().st_mtime_ns for p in saved.rglob("*")}
    args = ["--model=SASRec", "--dataset=Tiny", *(f"--{k}={v}" for k, v in tiny_overrides.items())]
    err = _error(capsys, [*args, "--learnin_rate=0.01", "--epoch=1"])
    assert "'learnin_rate' (--learnin_rate); did you mean learning_rate?" in err
    assert "'epoch' (--epoch); did you mean epochs?" in err
    err = _error(capsys, [*args, "--learning_rate=abc"])
    assert "'learning_rate' (--learning_rate) must be a positive number, got 'abc'" in err
    assert {p: p.stat().st_mtime_ns for p in saved.rglob("*")} == before  # no log, no stage


def test_an_unknown_key_in_a_file_is_named_with_file_and_line(capsys, tiny_overrides, tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text("# my settings\nlearning_rate: 1e-3\n\nhiden_size: 32\n")
    args = [f"--{k}={v}" for k, v in tiny_overrides.items()]
    err = _error(capsys, ["--model=SASRec", "--dataset=Tiny", f"--config_files={extra}", *args])
    assert f"'hiden_size' ({extra}:4); did you mean hidden_size?" in err


def test_extra_keys_let_deliberate_unknown_keys_through(plugins):
    overrides = {"note": "run 3", "extra_keys": ["note"]}
    config = build_config("SASRec", "Game", plugins, overrides=overrides)
    check_config(config, plugins, overrides=overrides)  # no error
    with pytest.raises(ConfigError, match="'note'"):
        check_config({**config, "extra_keys": []}, plugins, overrides=overrides)


@pytest.mark.parametrize(
    ("model", "key", "value", "message"),
    [
        ("SASRec", "learning_rate", -1e-3, "must be a positive number, got -0.001"),
        ("SASRec", "epochs", 2.5, "must be an integer >= 1, got 2.5"),
        ("SASRec", "reproducibility", "yes", "must be true or false, got 'yes'"),
        ("SASRec", "hidden_size", "big", "must be a number, got 'big'"),
        ("LLaRA", "sft_samples", -5, "must be an integer >= 0 or null, got -5"),
        ("LLaRA", "lora_dropout", 1.0, "must be a number in [0, 1), got 1.0"),
        ("LLaRA", "dtype", "int8", "must be one of auto, bf16, fp32 (fp16 is refused"),
        ("CPRec", "dtype", "fp16", "must be one of auto, bf16, fp32 (fp16 is refused: LoRA and"),
        ("LLaRA", "prompt_template", "llara", "names no registered prompt template: 'llara'"),
        ("LLaRA", "lr_scheduler", "wsa2", "names no registered scheduler: 'wsa2'; known: "),
        ("LLaRA", "sft_objective", "foo", "must be one of answer, listwise, mix, got 'foo'"),
        ("LLaRA", "sft_objective_mix", 1.5, "must be a number in [0, 1], got 1.5"),
        ("CPRec", "sft_objective_mix", -0.1, "must be a number in [0, 1], got -0.1"),
        ("LLaRA", "eval_item_embeddings", "shuffled", "must be one of trained, permuted, none"),
        ("CPRec", "cpt_variant", "DS+Mix", "must be one of DS, DS+Mix(N), DS+Mix(S), DS+Mix(A)"),
        ("CPRec", "mixing_rule", "g3", "names no registered mixing rule: 'g3'"),
        ("CPRec", "eta_h", "5e-4x", "must be a positive number, got '5e-4x'"),
    ],
)
def test_values_of_the_wrong_type_or_range_are_named(plugins, model, key, value, message):
    overrides = {key: value}
    config = build_config(model, "Game", plugins, overrides=overrides)
    with pytest.raises(ConfigError) as error:
        check_config(config, plugins, overrides=overrides)
    assert f"config key '{key}' (--{key}) {message}" in str(error.value)


def test_null_passes_only_where_a_default_or_the_rule_allows_it(plugins):
    for ok in ({"max_grad_norm": None}, {"valid_users": None}, {"lora_layers": None}):
        check_config(build_config("LLaRA", "Game", plugins, overrides=ok), plugins, overrides=ok)
    bad = {"learning_rate": None}
    with pytest.raises(ConfigError, match="positive number, got None"):
        check_config(build_config("LLaRA", "Game", plugins, overrides=bad), plugins, overrides=bad)


def test_rec_model_overrides_are_checked_against_the_embedding_model(plugins):
    morec = {"embedding_model": "MoRec", "rec_model_overrides": {"projection_dropout": 0.2}}
    check_config(build_config("LLaRA", "Game", plugins, overrides=morec), plugins, overrides=morec)
    typo = {**morec, "rec_model_overrides": {"projection_dropot": 0.2}}
    with pytest.raises(ConfigError, match="unknown MoRec key 'projection_dropot' in rec_model_ov"):
        check_config(
            build_config("LLaRA", "Game", plugins, overrides=typo), plugins, overrides=typo
        )
    for name, problem in [("LLaRA", "not an ID model"), ("SASRek", "names no registered model")]:
        bad = {"embedding_model": name}
        with pytest.raises(
            ConfigError, match=f"'embedding_model' \\(--embedding_model\\) .*{problem}"
        ):
            check_config(
                build_config("CPRec", "Game", plugins, overrides=bad), plugins, overrides=bad
            )


def test_an_llm_models_sasrec_keys_point_at_rec_model_overrides(plugins):
    overrides = {"hidden_size": 32, "eta_h": 1e-3, "rec_model_overrides": {"hiden_size": 32}}
    config = build_config("LLaRA", "Game", plugins, overrides=overrides)
    with pytest.raises(ConfigError) as error:
        check_config(config, plugins, overrides=overrides)
    message = str(error.value)
    assert (
        "'hidden_size' (--hidden_size); a setting of the ID model it uses (embedding_model) "
        "goes in rec_model_overrides" in message
    )
    assert "'eta_h' (--eta_h); only CPRec, CPTLLaRA read it" in message
    assert (
        "'hiden_size' in rec_model_overrides (--rec_model_overrides); did you mean hidden_size"
        in message
    )


def test_every_key_the_package_reads_or_checks_has_a_default_in_a_properties_file(plugins):
    declared = set(OWN_KEYS) | set(RECBOLE_RUNTIME)
    for path in (REPO / "properties").rglob("*.yaml"):
        declared |= set(read_yaml(path))
    for name in plugins.schedulers.names():
        declared |= set(schedule_keys(plugins.schedulers.get(name)))
    pattern = re.compile(r"""\b(?:config|cfg)(?:\.get\(|\[)\s*["']([A-Za-z_]+)["']""")
    read = {
        key
        for path in (REPO / "cprec_recbole").rglob("*.py")
        for key in pattern.findall(path.read_text())
    }
    assert len(read) > 60  # the scan finds the package's keys
    for stage in (DATA, ITEM_TEXT, CORPUS, CPT_STAGE, SFT, EVAL):
        read |= {*stage.reads, *stage.uses}
    assert read - declared == set()
