"""One home per config key: its line in properties/ holds its default, its comment and its check."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cprec_recbole.config import read_yaml
from cprec_recbole.errors import ConfigError
from cprec_recbole.keys import (
    DEFINING,
    SETTING,
    Choice,
    Registered,
    declarations,
    parse_rule,
    property_files,
    rules,
)
from cprec_recbole.llm.names import VARIANTS

REPO = Path(__file__).resolve().parent.parent


def all_lines():
    return [line for path in property_files((*DEFINING, *SETTING)) for line in declarations(path)]


def test_every_key_in_properties_has_a_one_line_comment():
    missing = [
        f"{line.path.name}:{line.line} {line.key}" for line in all_lines() if not line.comment
    ]
    assert missing == []


def test_every_key_is_declared_with_a_check_exactly_once_and_set_elsewhere_without_one():
    declared = rules()  # raises where a key is declared twice
    lines = all_lines()
    assert len(declared) > 100
    assert {line.key for line in lines} - set(declared) == set()  # every key has a check
    setting = property_files(SETTING)
    assert [line.key for line in lines if line.path in setting and line.rule] == []


def test_every_default_and_profile_value_passes_its_own_check(plugins):
    for path in property_files((*DEFINING, *SETTING)):
        values = read_yaml(path)
        for key, value in values.items():
            rule = rules()[key]
            if isinstance(rule, Registered):
                ok = value in getattr(plugins, rule.registry) or (value is None and rule.nullable)
            else:
                ok = rule.accepts(value)
            assert ok, f"{path.name}: {key}: {value!r} fails its check ({rule.describe()})"


def test_the_check_forms_read_as_the_module_docstring_says():
    count = parse_rule("int >= 1")
    assert count.accepts(1) and not count.accepts(0) and not count.accepts(1.5)
    assert not count.accepts(True) and not count.accepts(None)
    fraction = parse_rule("float in [0, 1) or null")
    assert fraction.accepts(0) and fraction.accepts(None) and not fraction.accepts(1.0)
    assert parse_rule("float > 0").describe() == "a positive number"
    assert parse_rule("one of VARIANTS") == Choice(tuple(VARIANTS))
    assert parse_rule("one of mean, distinct_prefix").accepts("distinct_prefix")
    assert parse_rule("registered backbones or null") == Registered("backbones", True)
    listed = parse_rule("list or str")
    assert listed.accepts("a") and listed.accepts(["a"]) and not listed.accepts(3)
    assert not parse_rule("bool").accepts(1) and parse_rule("any").accepts(object())


def test_a_check_the_reader_cannot_read_names_its_file_and_line(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("a: 1  # (int) fine\nb: 2  # (integer >= 1) a typo in the check\n")
    with pytest.raises(
        ConfigError, match=r"x.yaml:2: key .b.: cannot read the check in .\(integer >= 1\)"
    ):
        declarations(path)


def test_no_default_is_repeated_in_code():
    """A key's default lives in properties/ only: code reads config[key], never
    config.get(key, <a default>) or config.get(key) or <a default>."""
    keys = "|".join(sorted(rules(), key=len, reverse=True))
    get = rf"""config\.get\(\s*["']({keys})["']"""
    literal = r"""(?:["'\[{\d-]|True\b|False\b)"""
    pattern = re.compile(rf"{get}\s*,\s*{literal}|{get}\s*\)\s*or\s+{literal}")
    found = [
        f"{path.relative_to(REPO)}:{text[: m.start()].count(chr(10)) + 1}"
        for path in sorted((REPO / "cprec_recbole").rglob("*.py"))
        for text in [path.read_text()]
        for m in pattern.finditer(text)
    ]
    assert found == []


def test_every_key_a_stage_hashes_or_uses_has_a_home_with_a_check():
    from cprec_recbole.config_check import OWN_KEYS
    from cprec_recbole.data.corpus import CORPUS
    from cprec_recbole.data.prepare import DATA
    from cprec_recbole.llm.cpt import CPT_STAGE
    from cprec_recbole.llm.pipeline import EVAL, SFT
    from cprec_recbole.text_encoder import ITEM_TEXT

    for stage in (DATA, ITEM_TEXT, CORPUS, CPT_STAGE, SFT, EVAL):
        declared = {*stage.reads, *stage.uses}
        assert declared - set(rules()) - set(OWN_KEYS) == set(), stage.name
