"""Plugins travel to worker processes (Ray Tune trials) by pickling, which reloads them."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest

from cprec_recbole.plugins import KINDS, Plugins, load_plugins

STEP_DECAY = Path(__file__).resolve().parents[1] / "plugins" / "step_decay.py"


def names(plugins: Plugins) -> dict[str, list[str]]:
    return {kind: getattr(plugins, kind).names() for kind in KINDS}


@pytest.mark.parametrize("clone", [lambda p: pickle.loads(pickle.dumps(p)), copy.deepcopy])
def test_pickled_or_copied_plugins_reload_the_same_registries_with_file_plugins(clone):
    plugins = load_plugins([STEP_DECAY])
    again = clone(plugins)
    assert isinstance(again, Plugins) and again is not plugins
    assert "step_decay" in again.schedulers and names(again) == names(plugins)
    assert again.files == plugins.files == (str(STEP_DECAY),)


def test_a_relative_plugin_path_still_reloads_from_another_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(STEP_DECAY.parents[1])
    blob = pickle.dumps(load_plugins(["plugins/step_decay.py"]))
    monkeypatch.chdir(tmp_path)  # a Ray worker runs in its trial folder
    assert "step_decay" in pickle.loads(blob).schedulers


def test_a_missing_attribute_is_an_attribute_error_even_before_registries_exist():
    empty = Plugins.__new__(Plugins)  # as unpickling or copying sees it, before __init__
    assert not hasattr(empty, "registries") and not hasattr(empty, "schedulers")
    assert not hasattr(load_plugins(), "no_such_kind")
