"""Plugin loading: built-ins through the same hooks, files, duplicates, import failures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from cprec_recbole.cli import main
from cprec_recbole.command import build_config
from cprec_recbole.config_check import check_config
from cprec_recbole.errors import ConfigError
from cprec_recbole.plugins import LOAD_PLUGINS_ENV, PluginError, load_plugins
from cprec_recbole.quick_start import run

MODEL_PLUGIN = '''
from recbole.model.sequential_recommender import SASRec
from cprec_recbole import hookimpl

class MySASRec(SASRec):
    """A third-party model: registered by name, trained by the shared pipeline."""

@hookimpl
def register_models(register):
    register("{name}", MySASRec)
'''


def test_builtins_register_through_the_public_hooks():
    plugins = load_plugins()
    assert {"SASRec", "GRU4Rec", "CL4SRec"} <= set(plugins.models.names())
    assert plugins.models.owners["CL4SRec"] == "cprec_recbole.builtin.recbole_models"
    assert "uniform" in plugins.candidate_samplers and "Game" in plugins.domains


def test_a_plugin_file_adds_a_model_the_pipeline_trains(tmp_path, tiny_overrides):
    path = tmp_path / "my_model.py"
    path.write_text(MODEL_PLUGIN.format(name="MySASRec"))
    results = run("MySASRec", "Tiny", overrides={**tiny_overrides, "plugins": [str(path)]})
    assert results["model"] == "MySASRec" and results["test"]["users"] == 60


def test_a_plugin_models_own_properties_file_checks_its_keys(tmp_path, plugins):
    (tmp_path / "my_sasrec.yaml").write_text(
        "mix_weight: 0.5  # (float in [0, 1]) the plugin's own key\n"
        "n_layers: 1      # a built-in key: set, checked by its own declaration\n"
    )
    path = tmp_path / "my_model.py"
    own = "    properties = __import__('pathlib').Path(__file__).with_name('my_sasrec.yaml')\n"
    path.write_text(MODEL_PLUGIN.format(name="MySASRec").replace('"""\n', '"""\n' + own, 1))
    plugins = load_plugins([path])
    check = {"mix_weight": 0.25}
    check_config(build_config("MySASRec", "Game", plugins, overrides=check), plugins, {}, check)
    for bad, message in [(1.5, "in [0, 1], got 1.5"), ("half", "got 'half'")]:
        overrides = {"mix_weight": bad}
        config = build_config("MySASRec", "Game", plugins, overrides=overrides)
        with pytest.raises(
            ConfigError, match=r"'mix_weight' \(--mix_weight\) must be .*" + re.escape(message)
        ):
            check_config(config, plugins, overrides=overrides)


def test_duplicate_name_is_an_error_naming_both_plugins(tmp_path):
    path = tmp_path / "clash.py"
    path.write_text(MODEL_PLUGIN.format(name="SASRec"))
    with pytest.raises(PluginError) as info:
        load_plugins([path])
    message = str(info.value)
    assert "'SASRec' is registered twice" in message
    assert "cprec_recbole.builtin.recbole_models" in message and str(path) in message


def test_plugin_that_raises_on_import_is_reported_in_one_line_with_file_and_line(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import math\n\ndef helper():\n    return 1 / 0\n\nhelper()\n")
    with pytest.raises(PluginError) as info:
        load_plugins([path])
    message = str(info.value)
    assert "ZeroDivisionError: division by zero" in message and f"(at {path}:4)" in message
    assert "\n" not in message


def test_missing_plugin_file_is_named():
    with pytest.raises(PluginError, match="nope.py does not exist"):
        load_plugins(["nope.py"])


def test_loading_recbole_models_leaves_autograd_anomaly_mode_off():
    """RecBole's SINE module switches anomaly mode on at import; it would slow every backward."""
    import recbole.model.sequential_recommender.sine  # noqa: F401

    load_plugins([])
    assert not torch.is_anomaly_enabled()


RULE_PLUGIN = """
import numpy as np
from cprec_recbole import hookimpl

@hookimpl
def register_mixing_rules(register):
    register("always", lambda history, target: np.ones(len(target), dtype=bool))
"""


def install_fake_plugin(root: Path) -> None:
    """A package installed the way pip leaves it: a module and a dist-info with an entry point."""
    (root / "fake_rule_plugin.py").write_text(RULE_PLUGIN)
    info = root / "cprec_fake-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cprec-fake\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[cprec_recbole]\nfakerule = fake_rule_plugin\n")


def test_installed_plugins_load_unless_the_switch_excludes_them(tmp_path, monkeypatch, capsys):
    install_fake_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(LOAD_PLUGINS_ENV, raising=False)
    plugins = load_plugins()
    assert plugins.registered_by()["fakerule"] == {"mixing_rules": ["always"]}
    assert main(["--help"]) == 0
    assert "  fakerule: mixing rules: always\n" in capsys.readouterr().out
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")
    assert "always" not in load_plugins().mixing_rules
    for chosen in ("fakerule", "cprec-fake", " cprec-fake ,"):  # entry point or package name
        monkeypatch.setenv(LOAD_PLUGINS_ENV, chosen)
        assert "always" in load_plugins().mixing_rules
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "fakerule,llm-gpt4all")
    with pytest.raises(PluginError, match="names llm-gpt4all, which no installed package"):
        load_plugins()


def test_help_lists_what_each_plugin_registers(capsys):
    assert main(["--help", "--plugin=plugins/step_decay.py"]) == 0
    out = capsys.readouterr().out
    assert (
        "  cprec_recbole.builtin.recbole_models: models: CL4SRec, GRU4Rec, MoRec, SASRec, TedRec\n"
        in out
    )
    assert "  plugins/step_decay.py: schedulers: step_decay\n" in out
