"""Prompt templates are data, render the paper's sentences, and are registered like any plugin."""

from __future__ import annotations

import pytest

from cprec_recbole.builtin.prompt_templates import LLARA_HYBRID, LLARA_TEXT, UNIFIED
from cprec_recbole.llm.prompts import PromptTemplate, answer_text, render
from cprec_recbole.plugins import PluginError, load_plugins


def test_unified_renders_the_exact_table1_sentence_with_noun_item():
    prompt = render(UNIFIED, ["Halo 3", "Zelda"], ["Mario Kart", "Tetris"], noun="game")
    assert prompt == (
        "This user has bought Halo 3, Zelda in the previous. Please predict the next item this "
        "user will buy. The item title candidates are Mario Kart, Tetris. Choose only one item "
        "from the candidates. The answer is"
    )


def test_llara_hybrid_marks_every_item_and_uses_the_dataset_noun():
    prompt = render(LLARA_HYBRID, ["Halo 3"], ["Mario Kart", "Tetris"], noun="game")
    assert prompt == (
        "This user has bought Halo 3 [HistoryEmb] in the previous. Please predict the next game "
        "this user will buy. The game title candidates are Mario Kart [CansEmb], Tetris [CansEmb]."
        " Choose only one game from the candidates. The answer is"
    )
    assert LLARA_HYBRID.placeholders == ("[HistoryEmb]", "[CansEmb]")


def test_llara_text_uses_ph_tokens_that_are_not_replaced():
    prompt = render(LLARA_TEXT, ["Halo 3"], ["Tetris"], noun="game")
    assert "Halo 3 [PH]" in prompt and "Tetris [PH]" in prompt
    assert LLARA_TEXT.placeholders == () and LLARA_TEXT.special_tokens == ("[PH]",)


def test_prompt_ends_before_the_answer_and_answer_is_space_title_newline():
    for template in (LLARA_HYBRID, LLARA_TEXT, UNIFIED):
        assert render(template, ["a"], ["b"], "game").endswith("The answer is")
    assert answer_text("Tetris") == " Tetris\n"


def test_titles_with_braces_render_verbatim():
    prompt = render(UNIFIED, ["{weird} title"], ["x"], "item")
    assert "{weird} title" in prompt


def test_builtin_templates_and_evaluators_are_registered():
    plugins = load_plugins()
    assert {"llara_hybrid", "llara_text", "unified"} <= set(plugins.prompt_templates.names())
    assert {"generate", "score"} <= set(plugins.evaluators.names())


def test_a_plugin_file_adds_a_template_and_a_duplicate_name_is_an_error(tmp_path):
    plugin = tmp_path / "my_template.py"
    plugin.write_text(
        "from cprec_recbole.hookspecs import hookimpl\n"
        "from cprec_recbole.llm.prompts import PromptTemplate\n"
        "@hookimpl\n"
        "def register_prompt_templates(register):\n"
        "    register('short', PromptTemplate(text='{history} -> {candidates}? The answer is'))\n"
    )
    template = load_plugins([plugin]).prompt_templates.get("short")
    assert isinstance(template, PromptTemplate)
    assert render(template, ["a"], ["b", "c"], "item") == "a -> b, c? The answer is"

    clash = tmp_path / "clash.py"
    clash.write_text(
        "from cprec_recbole.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def register_prompt_templates(register):\n"
        "    register('unified', None)\n"
    )
    with pytest.raises(PluginError, match="unified"):
        load_plugins([clash])
