"""Bad inputs and faults end as one line on stderr, exit code 2, no traceback (issue 23, item 6)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cprec_recbole import quick_start
from cprec_recbole.cli import main
from cprec_recbole.command import setup
from cprec_recbole.pipeline import run_pipeline

SYNTAX_ERROR = "def broken(:\n"
HOOK_RAISES = (
    "from cprec_recbole import hookimpl\n\n@hookimpl\ndef register_models(register):\n"
    "    raise RuntimeError('boom')\n"
)


@pytest.fixture(autouse=True)
def no_log_handlers_of_earlier_tests():
    """An earlier test's run leaves its stderr handler (a closed capture) on the root logger."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_cprec", False)]:
        root.removeHandler(handler)


def args_of(overrides: dict) -> list[str]:
    return [f"--{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in overrides.items()]


def one_error_line(capsys) -> str:
    """The error line: stderr's last, the only one, after the run's log lines if any."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [x for x in lines if x.startswith("error: ")] == lines[-1:]
    return lines[-1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset=../../etc/passwd"], "dataset name '../../etc/passwd' must be a plain name"),
        (["--force=nosuch"], "--force=nosuch: SASRec's pipeline has no such stage; it has data"),
        (["--config_files=."], "config file . cannot be read (Is a directory)"),
        (["--sparsity_buckets=[]"], "must be a non-empty ascending list of integers, got []"),
        (["--user_sample_num=0"], "'user_sample_num' (--user_sample_num) must be an integer >= 1"),
        (["--tune=true", "--tune_space={learning_rate: []}"], "tune_space lists no values for"),
        (
            ["--tune=true", "--tune_space={learnin_rate: [0.1]}"],
            "tune_space point {'learnin_rate': 0.1}: unknown config key 'learnin_rate'",
        ),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(tiny_overrides, capsys, extra, message):
    command = ["--model=SASRec", "--dataset=Tiny", *args_of(tiny_overrides), *extra]
    assert main(command) == 2
    assert message in one_error_line(capsys)
    assert not list(Path(tiny_overrides["output_dir"]).glob("*/*/manifest.json"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rec_model_overrides=[1]"], "'rec_model_overrides' (--rec_model_overrides) must be"),
        (["--eval_users=0"], "'eval_users' (--eval_users) must be an integer >= 1 or null, got 0"),
    ],
)
def test_a_bad_llm_argument_is_one_line_and_exit_2(tiny_sft, capsys, extra, message):
    assert main(["--model=LLaRA", "--dataset=Tiny", *args_of(tiny_sft), *extra]) == 2
    assert message in one_error_line(capsys)


def test_an_output_dir_that_is_a_file_is_named(tiny_overrides, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    command = ["--model=SASRec", "--dataset=Tiny", *args_of(tiny_overrides)]
    assert main([*command, f"--output_dir={blocker}"]) == 2
    assert f"{blocker}/log: Not a directory; check the path" in one_error_line(capsys)


@pytest.mark.parametrize("seeds", ["0", "-2", "abc"])
def test_an_experiment_needs_one_seed_or_more(tiny_base, capsys, seeds):
    command = ["--experiment=cost", "--dataset=Tiny", f"--seeds={seeds}", *args_of(tiny_base)]
    assert main(command) == 2
    assert "--seeds must be an integer >= 1, got" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SYNTAX_ERROR, "raised while being imported: SyntaxError: invalid syntax (at "),
        (HOOK_RAISES, "register_models raised RuntimeError: boom (at "),
    ],
)
def test_a_broken_plugin_is_named_in_one_line(tiny_overrides, tmp_path, capsys, text, message):
    plugin = tmp_path / "broken.py"
    plugin.write_text(text)
    command = ["--model=SASRec", "--dataset=Tiny", f"--plugin={plugin}"]
    assert main([*command, *args_of(tiny_overrides)]) == 2
    line = one_error_line(capsys)
    assert message in line and str(plugin) in line


@pytest.mark.parametrize("damage", ["{truncated", "[1, 2]"])
def test_a_damaged_manifest_names_the_stage_to_rebuild_and_the_plan_marks_it(
    tiny_overrides, capsys, damage
):
    config, plugins, _ = setup("SASRec", "Tiny", overrides=tiny_overrides)
    folder = run_pipeline("SASRec", config, plugins, until="data").folders["data"]
    (folder / "manifest.json").write_text(damage)
    command = ["--model=SASRec", "--dataset=Tiny", *args_of(tiny_overrides)]
    assert main(command) == 2
    line = one_error_line(capsys)
    assert f"{folder}/manifest.json is damaged" in line and "with --force=data" in line
    assert main([*command, "--plan"]) == 0
    assert "damaged (manifest.json unreadable)" in capsys.readouterr().out
    assert main([*command, "--force=data"]) == 0  # rebuilt, then the model trains


def test_an_unexpected_error_is_one_line_with_its_place_and_the_traceback_in_a_file(
    tiny_overrides, capsys, monkeypatch
):
    def fails(*args, **kwargs):
        raise RuntimeError("something inside broke\nsecond line")

    monkeypatch.setattr(quick_start, "run", fails)
    assert main(["--model=SASRec", "--dataset=Tiny", *args_of(tiny_overrides)]) == 2
    line = one_error_line(capsys)
    assert line.startswith("error: unexpected RuntimeError at ")
    assert "something inside broke; not a known bad input" in line
    trace = Path(line.rsplit("the traceback is in ", 1)[1])
    assert "Traceback" in trace.read_text() and "second line" in trace.read_text()


def test_ctrl_c_exits_130_in_one_line(tiny_overrides, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quick_start, "run", interrupted)
    assert main(["--model=SASRec", "--dataset=Tiny", *args_of(tiny_overrides)]) == 130
    assert capsys.readouterr().err == (
        "interrupted: finished stages are kept; run it again to resume\n"
    )
