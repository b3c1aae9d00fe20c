"""Layered config: overall -> model -> dataset -> files -> command line."""

from __future__ import annotations

import pytest

from cprec_recbole.config import load_config, parse_overrides
from cprec_recbole.errors import ConfigError


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
