"""Named experiments: YAML checking, seeds, the paired t-test, report files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cprec_recbole.cli import main
from cprec_recbole.command import build_config
from cprec_recbole.config import PROPERTIES
from cprec_recbole.config_check import check_config
from cprec_recbole.errors import ConfigError
from cprec_recbole.experiments import (
    VALID_EVAL,
    archive,
    comparable_hr1,
    cost_of,
    cost_table,
    earlier_rows,
    figure,
    lines_of,
    load_experiment,
    overrides_for,
    paired_test,
    reference_levels,
    render_report,
    shared_hr1,
    summary_table,
    train_seconds,
    valid_eval_hr1,
)
from tests.conftest import TINY_SIZES

MODELS = [
    *("SASRec", "GRU4Rec", "LLaRA", "CPRec", "CPTLLaRA", "LLaMA2ZeroShot", "CL4SRec"),
    *("MoRec", "TedRec", "ChatRec"),
]


def test_every_builtin_experiment_loads_and_names_registered_models(plugins):
    names = plugins.experiments.names()
    expected = {
        "table3",
        "ablation",
        "zero_shot",
        "sparsity",
        "data_volume",
        "cost",
        "cpu_comparison",
        "diagnostics",
        "learning_curve",
    }
    assert expected <= set(names)
    for name in names:  # every arm's config passes the check its experiment runs first
        experiment = load_experiment(name, plugins.experiments.get(name), plugins.models.names())
        for arm in experiment.arms:
            config = build_config(arm.model, "Game", plugins, (), arm.overrides)
            check_config(config, plugins, [], arm.overrides)
    table3 = load_experiment("table3", PROPERTIES / "experiments" / "table3.yaml", MODELS)
    assert [a.model for a in table3.arms] == [
        "GRU4Rec",
        "SASRec",
        "CL4SRec",
        "MoRec",
        "TedRec",
        "LLaMA2ZeroShot",
        "ChatRec",
        "LLaRA",
        "CPTLLaRA",
        "CPRec",
    ]
    seed_keys = {a.model: a.seed_key for a in table3.arms}
    assert seed_keys["CPTLLaRA"] == "cpt_seed" and seed_keys["ChatRec"] is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "seeds: 2\nrnus:\n  - {model: SASRec}\n",
            r"x.yaml:2: unknown experiment key 'rnus'; did you mean runs\?",
        ),
        (
            "runs:\n  - {model: SASRec, overides: {}}\n",
            r"runs\[0\]: unknown experiment key 'overides'; did you mean overrides\?",
        ),
        ("runs:\n  - {model: SASrec}\n", r"runs\[0\]: unknown model 'SASrec'"),
        ("runs: []\n", "'runs' must list the arms"),
        ("report: bars\nruns:\n  - {model: SASRec}\n", "report must be one of"),
        ("runs:\n  - {model: SASRec}\n  - {model: SASRec}\n", "two runs share a name"),
        ("report: diagnostics\nruns:\n  - {model: SASRec}\n", "diagnostics needs 'reference:'"),
        ("figure: lines\nruns:\n  - {model: SASRec}\n", "lines needs 'x:'"),
        (
            "figure: lines\nx: epochs\nruns:\n  - {model: SASRec, overrides: {epochs: all}}\n",
            "run SASRec must set epochs to a positive number",
        ),
        ("figure: lines\nx: epochs\nruns:\n  - {model: SASRec}\n", "a run that sets epochs"),
    ],
)
def test_experiment_yaml_errors_name_the_bad_key(tmp_path, text, message):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_experiment("x", path, MODELS)


def test_the_learning_curve_draws_two_recipes_of_llara_and_cprec_at_the_same_sizes(
    plugins, tmp_path
):
    path = PROPERTIES / "experiments" / "learning_curve.yaml"
    curve = load_experiment("learning_curve", path, plugins.models.names())
    lines = lines_of(curve, [arm.name for arm in curve.arms])
    sizes = {line: sorted(a.overrides["sft_samples"] for a in arms) for line, arms in lines.items()}
    assert sizes == {
        line: [768, 3072, 11307]
        for line in (
            "LLaRA",
            "CPRec",
            "LLaRA, item tokens over MoRec",
            "CPRec, item tokens over MoRec",
        )
    }
    built = [a.name for a in curve.arms if a.overrides.get("sft_samples", 0) < 11307]
    assert lines_of(curve, built)["CPRec"] == [a for a in lines["CPRec"] if a.name in built]
    assert built[0] == "SASRec" and len(built) == 9  # SASRec sets no samples: a level
    summary = pd.DataFrame(
        {"hr@1 mean": [0.27] + [0.1, 0.15, 0.2, 0.25] * 2, "hr@1 std": [0.01] * 9}, index=built
    )
    assert reference_levels(summary, curve) == {"SASRec": 0.27}
    assert comparable_hr1(summary).idxmax() == "SASRec"
    summary["hr@1 (1000 shared users)"] = [0.24] + [None] * 8  # SASRec on the LLMs' users
    assert reference_levels(summary, curve) == {"SASRec": 0.24}
    assert comparable_hr1(summary).idxmax() == "CPRec item tokens 768"  # the best, 0.25 > 0.24
    figure(summary, tmp_path / "curve.png", "learning curve", curve)  # the lines built so far
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_a_report_whose_best_arm_was_carried_tests_against_the_best_arm_ranked_here(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("runs:\n  - {model: SASRec}\n  - {model: GRU4Rec}\n")
    experiment = load_experiment("x", path, MODELS)
    rows = pd.DataFrame({"arm": ["SASRec", "GRU4Rec"], "hr@1": [0.3, 0.4], "folder": ["a", "b"]})
    summary = summary_table(rows, ["hr@1"], ["SASRec", "GRU4Rec"])
    summary["p vs best (hits@1)"] = [None, None]
    report = render_report(experiment, "Tiny", summary, rows, "GRU4Rec", "SASRec", 1, 0.0, ["b"])
    assert "ranks are here, SASRec (the best, **GRU4Rec**, was read from an earlier" in report
    assert "| **GRU4Rec** | 0.4000 | 1 | - |" in report
    alone = render_report(experiment, "Tiny", summary, rows, "GRU4Rec", "GRU4Rec", 1, 0.0)
    assert "against the best arm, **GRU4Rec**;" in alone


def test_an_earlier_results_csv_that_is_not_one_is_named_with_what_to_do(tmp_path):
    path = tmp_path / "results.csv"
    assert earlier_rows(path) == {}
    path.write_text("arm,seed,hr@1,folder\nSASRec,0,0.25,saved/rec_model/abc\n")
    assert earlier_rows(path)["rec_model/abc"]["hr@1"] == 0.25
    path.write_text("arm,seed\nSASRec,0\n")
    with pytest.raises(
        ConfigError, match=r"results.csv: a results.csv needs the columns \['folder', 'hr@1'\]"
    ):
        earlier_rows(path)
    path.write_bytes(b"")
    with pytest.raises(
        ConfigError, match="results.csv: not a results.csv .*; restore or delete it"
    ):
        earlier_rows(path)


def test_valid_hr1_of_the_arms_that_ranked_valid_users_is_their_mean_over_seeds():
    rows = pd.DataFrame({"arm": ["SASRec", "LLaRA", "LLaRA"], "valid_eval_hr@1": [None, 0.2, 0.3]})
    valid = valid_eval_hr1(rows, ["SASRec", "LLaRA"])
    assert pd.isna(valid["SASRec"]) and valid["LLaRA"] == pytest.approx(0.25)
    assert valid_eval_hr1(rows.iloc[:1], ["SASRec"]) is None


def test_paired_t_test_on_identical_hits_reports_no_significance():
    hits = pd.Series([1.0, 0.0, 1.0, 0.5], index=list("abcd"))
    assert paired_test(hits, hits.copy()) == 1.0
    better = pd.Series([1.0] * 30 + [0.0] * 10, index=range(40))
    worse = pd.Series([0.0] * 30 + [0.0] * 10, index=range(40))
    assert paired_test(better, worse) < 0.05


def test_arms_scored_on_different_users_are_also_compared_on_the_shared_ones():
    every_user = pd.Series([1.0, 1.0, 0.0, 0.0], index=[1, 2, 3, 4])
    sampled = pd.Series([1.0, 0.0], index=[3, 4])
    shared = shared_hr1({"SASRec": every_user, "LLaRA": sampled})
    assert shared.name == "hr@1 (2 shared users)"
    assert shared.to_dict() == {"SASRec": 0.0, "LLaRA": 0.5}
    assert shared_hr1({"SASRec": every_user, "GRU4Rec": every_user * 0}) is None


def test_training_time_counts_every_process_of_a_resumed_stage():
    resumed_cpt = {"wall_time_s": 2271.0, "metrics": {"train_time_s": 3289.1}}
    resumed_sft = {
        "wall_time_s": 1555.7,
        "metrics": {"epochs": [{"train_time_s": 3000.0}, {"train_time_s": 696.8}]},
    }
    assert train_seconds(resumed_cpt) == 3289.1
    assert train_seconds(resumed_sft) == 3696.8
    assert train_seconds({"wall_time_s": 12.5, "metrics": {"best_valid_score": 0.3}}) == 12.5


def _stage(folder, manifest, results=None):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if results is not None:
        (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_cost_of_an_llm_is_its_sft_with_its_cpt_apart(tmp_path):
    cpt = _stage(tmp_path / "cpt" / "c1", {"stage": "cpt", "metrics": {"train_time_s": 50.0}})
    sft = {"stage": "sft", "peak_memory_mb": 7.0, "metrics": {"epochs": [{"train_time_s": 9.0}]}}
    sft = _stage(tmp_path / "sft" / "s1", sft)
    evaluation = {"stage": "eval", "peak_memory_mb": 3.0}
    sasrec = {"stage": "rec_model", "wall_time_s": 4.0, "peak_memory_mb": 1.0}
    sasrec_folder = _stage(tmp_path / "rec_model" / "r1", sasrec, {"epochs": 8, "eval_time_s": 0.5})
    pipelines = {
        "cprec": {"rec_model": sasrec_folder, "cpt": cpt, "sft": sft},
        "cpt_only": {"cpt": cpt},
        "zero": {"rec_model": None},
    }
    found = {
        name: cost_of(
            {
                "data": tmp_path,
                **stages,
                "eval": _stage(tmp_path / "eval" / name, evaluation, {"eval_time_s": 2.0}),
            }
        )
        for name, stages in pipelines.items()
    }
    found["sasrec"] = cost_of({"data": tmp_path, "rec_model": sasrec_folder})
    old = _stage(tmp_path / "rec_model" / "r0", sasrec, {})  # no epoch count
    found["old"] = cost_of({"data": tmp_path, "rec_model": old})
    columns = ("train_s", "epochs", "train_s_per_epoch", "cpt_s", "eval_s")
    assert {name: tuple(c[k] for k in columns) for name, c in found.items()} == {
        "cprec": (9.0, 1, 9.0, 50.0, 2.0),
        "cpt_only": (None, None, None, 50.0, 2.0),
        "zero": (None, None, None, None, 2.0),
        "sasrec": (4.0, 8, 0.5, None, 0.5),
        "old": (4.0, None, None, None, None),
    }
    assert found["cprec"]["train_peak_mb"] == 7.0
    rows = pd.DataFrame([{"arm": name, **cost} for name, cost in found.items()])
    table = cost_table(rows).splitlines()
    assert table[0].startswith("| arm | epochs | training s / epoch | training peak MB | CPT s |")
    assert table[2] == "| cprec | 1 | 9 | 7 | 50 | 2 | 3 |"
    assert table[5] == "| sasrec | 8 | 0.5 | 1 | - | 0.5 | 1 |"


EXPERIMENT_PLUGIN = """
import shutil
from pathlib import Path
from cprec_recbole import hookimpl

@hookimpl
def register_experiments(register):
    register("mini", Path(__file__).with_name("mini.yaml"))
"""


def mini_experiment(tmp_path, tiny_base, head: str, gru4rec: str = "") -> list[str]:
    """The command running ``mini``, a plugin's experiment of SASRec and GRU4Rec on Tiny."""
    (tmp_path / "mini.yaml").write_text(
        f"{head}runs:\n"
        f"  - {{model: SASRec, overrides: {TINY_SIZES['SASRec']}}}\n"
        f"  - {{model: GRU4Rec, overrides: {TINY_SIZES['GRU4Rec']}{gru4rec}}}\n"
    )
    plugin = tmp_path / "mini_experiment.py"
    plugin.write_text(EXPERIMENT_PLUGIN)
    args = [f"--{k}={v}" for k, v in {**tiny_base, "epochs": 1}.items()]
    return ["--experiment=mini", "--dataset=Tiny", f"--plugin={plugin}", *args]


def test_a_plugin_experiment_runs_seeds_and_writes_its_report(tmp_path, tiny_base, capsys):
    head = "description: two ID models\nseeds: 2\nfigure: bars\n"
    command = mini_experiment(tmp_path, tiny_base, head)
    assert main(command) == 0
    folder = tmp_path / "saved" / "experiments" / "mini-Tiny"
    assert f"report: {folder / 'report.md'}" in capsys.readouterr().out
    rows = pd.read_csv(folder / "results.csv")
    assert rows[["arm", "seed"]].values.tolist() == [
        ["SASRec", 0],
        ["SASRec", 1],
        ["GRU4Rec", 0],
        ["GRU4Rec", 1],
    ]
    assert rows["folder"].nunique() == 4  # each seed its own stage
    report = (folder / "report.md").read_text()
    assert "| model | hr@1 | hr@3 |" in report and " ± " in report and "mini.png" in report
    assert (folder / "mini.png").stat().st_size > 1000
    again = main(command)
    reread = pd.read_csv(folder / "results.csv").drop(columns="seconds")
    assert again == 0 and reread.equals(rows.drop(columns="seconds"))  # all stages reused


def test_report_of_a_partly_built_experiment_builds_nothing_and_names_the_rest(
    tmp_path, tiny_base, capsys
):
    command = mini_experiment(tmp_path, tiny_base, "seeds: 2\nfigure: bars\n")
    assert main([*command, "--report"]) == 2
    assert "experiment mini: no run is built yet" in capsys.readouterr().err
    assert not (tmp_path / "saved").exists()
    assert main(command) == 0
    folder = tmp_path / "saved" / "experiments" / "mini-Tiny"
    full = pd.read_csv(folder / "results.csv")
    last = (full["arm"] == "GRU4Rec") & (full["seed"] == 1)
    unbuilt = Path(full.loc[last, "folder"].item())
    shutil.rmtree(unbuilt)
    (data,) = (tmp_path / "saved" / "data").iterdir()
    shutil.rmtree(data)  # a built run needs only its final stage
    capsys.readouterr()
    assert main([*command, "--report"]) == 0
    assert not unbuilt.exists()  # nothing was built
    rows = pd.read_csv(folder / "results.csv")
    assert rows["seconds"].isna().all()  # read, not run
    # the earlier results.csv holds the run whose folder is gone: the report keeps its row
    assert rows.drop(columns="seconds").equals(full.drop(columns="seconds"))
    report = (folder / "report.md").read_text()
    gru4rec = next(line for line in report.splitlines() if line.startswith("| GRU4Rec |"))
    assert gru4rec.endswith(" | 2 | - |")  # both seeds, no paired test without its ranks
    assert "results.csv: 1 of 4 runs, whose final folder is not on this machine" in report
    assert f"- GRU4Rec seed 1: {unbuilt}\n" in report and "Not built yet" not in report
    (folder / "results.csv").unlink()  # a machine without the earlier report
    assert main([*command, "--report"]) == 0
    rows = pd.read_csv(folder / "results.csv")
    assert rows["seconds"].isna().all()  # read, not run
    assert rows.drop(columns="seconds").equals(full[~last].drop(columns="seconds"))
    report = (folder / "report.md").read_text()
    gru4rec = next(line for line in report.splitlines() if line.startswith("| GRU4Rec |"))
    assert gru4rec.split(" | ")[-2] == "1"  # the seeds it holds
    assert "Not built yet (1 of 4 runs;" in report and VALID_EVAL not in report
    missing = f"data {data.name} to build; rec_model {unbuilt.name} to build"
    assert f"- GRU4Rec seed 1: {missing}\n" in report
    assert (folder / "mini.png").stat().st_size > 1000
    assert main(["--model=SASRec", "--dataset=Tiny", "--report"]) == 2
    assert "--report goes with --experiment" in capsys.readouterr().err


def test_a_bad_override_stops_the_experiment_before_any_run(tmp_path, tiny_base, capsys):
    args = [f"--{k}={v}" for k, v in tiny_base.items()]
    assert main(["--experiment=cost", "--dataset=Tiny", "--hiden_size=3", *args]) == 2
    assert "experiment cost, run SASRec: unknown config key 'hiden_size'" in capsys.readouterr().err
    assert not (tmp_path / "saved").exists()


def test_an_override_only_some_arms_read_reaches_those_arms_and_a_typo_still_fails(
    tmp_path, tiny_base, capsys
):
    readers = {"SASRec": {"epochs", "hidden_size"}, "LLaRA": {"epochs", "eval_users"}}
    given = {"epochs": 1, "eval_users": 5, "hiden_size": 3}
    assert overrides_for(given, readers, "SASRec") == {"epochs": 1, "hiden_size": 3}
    assert overrides_for(given, readers, "LLaRA") == given
    args = [f"--{k}={v}" for k, v in tiny_base.items()]
    command = ["--experiment=table3", "--dataset=Tiny", "--eval_users=3", "--hiden_size=3"]
    assert main([*command, *args]) == 2  # stops before any run
    err = capsys.readouterr().err
    assert "run GRU4Rec: unknown config key 'hiden_size'" in err
    assert "eval_users" not in err  # the ID arms run without it, the LLM arms read it


def test_a_config_file_key_only_some_arms_read_reaches_those_arms(tmp_path, tiny_base, capsys):
    extra = tmp_path / "extra.yaml"
    extra.write_text("eval_users: 3\nhiden_size: 3\n")
    args = [f"--{k}={v}" for k, v in tiny_base.items()]
    command = ["--experiment=table3", "--dataset=Tiny", f"--config_files={extra}"]
    assert main([*command, *args]) == 2  # stops before any run
    err = capsys.readouterr().err
    assert f"run GRU4Rec: unknown config key 'hiden_size' ({extra}:2)" in err
    assert "eval_users" not in err


def test_plan_of_an_experiment_lists_the_shared_stages_once_and_builds_nothing(
    tmp_path, tiny_base, capsys
):
    command = mini_experiment(tmp_path, tiny_base, "seeds: 2\n", ", seed_key: null")
    assert main([*command, "--plan"]) == 0
    assert not (tmp_path / "saved").exists()
    groups = capsys.readouterr().out.strip().split("\n\n")
    titles = [group.splitlines()[0] for group in groups]
    assert titles == [
        "shared (built once, before the runs):",
        "SASRec seed 0:",
        "SASRec seed 1:",
        "GRU4Rec seed 0:",
    ]
    stages = [[row.split()[0] for row in group.splitlines()[2:]] for group in groups]
    assert stages == [["data"], ["rec_model"], ["rec_model"], ["rec_model"]]
    assert all(" to build " in row for group in groups for row in group.splitlines()[2:])


def test_an_experiment_builds_its_shared_stages_before_its_runs(tmp_path, tiny_base, plugins):
    from cprec_recbole.command import build_config
    from cprec_recbole.pipeline import RunSpec, build_shared, run_pipeline
    from cprec_recbole.run_config import RunConfig

    base = {**tiny_base, **TINY_SIZES["SASRec"], "epochs": 1}
    specs = [
        RunSpec(
            f"seed {seed}",
            "SASRec",
            RunConfig(build_config("SASRec", "Tiny", plugins, (), {**base, "seed": seed})),
        )
        for seed in (1, 2)
    ]
    (shared,) = build_shared(specs, plugins)
    saved = tmp_path / "saved"
    assert shared.parent == saved / "data" and (shared / "manifest.json").is_file()
    assert not (saved / "rec_model").exists()  # each run's own stage is left to the run

    for spec in specs:
        run_pipeline(spec.model, spec.config, plugins)
    shutil.rmtree(shared)
    assert build_shared(specs, plugins) == set()  # built runs need no shared stage
    assert not shared.exists()
    assert build_shared(specs, plugins, force=["data"]) == {shared}  # unless one is forced


def test_a_report_archives_eval_folders_once_again_when_rebuilt_and_no_model_folder(tmp_path):
    saved = tmp_path / "saved"
    evals, sasrec = saved / "eval" / "abc", saved / "rec_model" / "def"
    for folder in (evals, sasrec):
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text('{"built": 1}')
        (folder / ".lock").touch()
    (evals / "test_ranks.tsv").write_text("user_id\trank\na\t0\n")
    into = tmp_path / "report" / "stages"
    archive([str(evals), str(sasrec)], into)
    copied = into / "eval" / "abc"
    assert sorted(p.name for p in copied.iterdir()) == ["manifest.json", "test_ranks.tsv"]
    assert not (into / "rec_model").exists()  # a model's folder: its weights are loaded
    (evals / "test_ranks.tsv").write_text("changed without a rebuild")
    archive([str(evals)], into)
    assert (copied / "test_ranks.tsv").read_text() == "user_id\trank\na\t0\n"  # same build
    (evals / "manifest.json").write_text('{"built": 2}')  # rebuilt (--force=eval)
    archive([str(evals)], into)
    assert (copied / "test_ranks.tsv").read_text() == "changed without a rebuild"
    assert list((into / "eval").iterdir()) == [copied]  # no temp folder left beside it
