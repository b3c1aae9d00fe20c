"""Named experiments: ``--experiment=NAME --dataset=D`` runs the arms an experiment lists (a
model plus overrides) over seeds and writes ``report.md``, ``results.csv`` and figures into
``<output_dir>/experiments/<NAME>-<D>/``.

Experiments are YAML files (``properties/experiments/*.yaml``; plugins add theirs with
``register_experiments``). Each run goes through the same cached stages as the CLI, so an
interrupted experiment picks up from its finished stages; the stages two or more runs share (one
CPT for every SFT seed, one SASRec for every LLaRA arm) are found by walking every run's pipeline
without building, and built once before the runs (``--plan`` lists them once); ``--report``
builds nothing and reports the runs already built (and those an earlier results.csv holds whose
folders are elsewhere), naming the rest. The best arm (test hr@1 on the users every arm ranked)
is compared with each other arm by the paired t-test of per-user hits@1 (averaged over seeds),
marked where p < 0.05.
"""

from __future__ import annotations

import difflib
import json
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from cprec_recbole.compare import mean_hits, paired_hits
from cprec_recbole.config import key_lines, read_yaml
from cprec_recbole.diagnostics import diagnostics_section
from cprec_recbole.errors import ConfigError, within
from cprec_recbole.io import write_atomic, write_atomic_dir, write_text
from cprec_recbole.pipeline import RunSpec, build_shared, is_built, walk
from cprec_recbole.plugins import Plugins
from cprec_recbole.results import markdown_table
from cprec_recbole.run_config import RunConfig
from cprec_recbole.stages import LOCK, MANIFEST, read_manifest

EXPERIMENT_KEYS = ("description", "seeds", "runs", "metrics", "report", "figure", "reference", "x")
RUN_KEYS = ("name", "model", "overrides", "seed_key", "line")
REPORTS = ("table", "buckets", "cost", "diagnostics")
FIGURES = (None, "bars", "curve", "lines")
DEFAULT_METRICS = ["hr@1", "hr@3", "hr@5", "ndcg@3", "ndcg@5", "valid_ratio"]
#: The report's column of valid HR@1 on the ``eval_valid_users`` an LLM arm also ranked (mean
#: over seeds): the split an experiment chooses its best LLM arm on, never the test split.
VALID_EVAL = "valid hr@1 (eval_valid_users)"
#: The final stages a report copies beside itself (:func:`archive`): those no other stage
#: loads, results and ranks only (~0.1 MB per 1,000 ranked users). An ID model's final stage
#: holds the weights the LLM arms load, so a results-only copy could pass for a model; it
#: rebuilds in minutes.
ARCHIVED = ("eval",)
UNCOPIED = shutil.ignore_patterns(LOCK)  # a lock belongs to this machine's processes


@dataclass(frozen=True)
class Arm:
    """One row of an experiment: a model with its overrides; ``seed_key`` varies per seed
    (``seed`` for SFT and ID models, ``cpt_seed`` for CPTLLaRA; null: deterministic, run once);
    ``line``: the line of a ``lines`` figure it is a point of (its model's by default)."""

    name: str
    model: str
    overrides: dict = field(default_factory=dict)
    seed_key: str | None = "seed"
    line: str | None = None


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    arms: list[Arm]
    seeds: int = 4
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    report: str = "table"
    figure: str | None = None
    reference: str | None = None  # diagnostics: the arm whose first picks the others are matched to
    x: str | None = None  # lines: the override on the x axis, one line per model


def _bad_key(where: str, key: str, known: Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known)}"
    return ConfigError(f"{where}: unknown experiment key {key!r}{hint}")


def load_experiment(name: str, path: Path, models: Iterable[str]) -> Experiment:
    """Read and check an experiment file; an error names the file, line and key."""
    data = read_yaml(path)
    lines = key_lines(path)
    for key in data:
        if key not in EXPERIMENT_KEYS:
            raise _bad_key(f"{path}:{lines.get(key, '?')}", key, EXPERIMENT_KEYS)
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"{path}: 'runs' must list the arms ({{model: NAME, ...}} each)")
    models = set(models)
    arms = []
    for i, run in enumerate(runs):
        where = f"{path}: runs[{i}]"
        if not isinstance(run, dict) or "model" not in run:
            raise ConfigError(f"{where} must be a mapping with a 'model' key, got {run!r}")
        for key in run:
            if key not in RUN_KEYS:
                raise _bad_key(where, key, RUN_KEYS)
        if run["model"] not in models:
            raise ConfigError(f"{where}: unknown model {run['model']!r}; known: {sorted(models)}")
        arms.append(
            Arm(
                name=str(run.get("name", run["model"])),
                model=run["model"],
                overrides=dict(run.get("overrides") or {}),
                seed_key=run.get("seed_key", "seed"),
                line=None if run.get("line") is None else str(run["line"]),
            )
        )
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: two runs share a name in {names}; give them 'name:'")
    report, figure = data.get("report", "table"), data.get("figure")
    if report not in REPORTS:
        raise ConfigError(f"{path}: report must be one of {REPORTS}, got {report!r}")
    if figure not in FIGURES:
        raise ConfigError(f"{path}: figure must be one of {FIGURES}, got {figure!r}")
    reference, x = data.get("reference"), data.get("x")
    if report == "diagnostics" and reference not in names:
        raise ConfigError(f"{path}: report diagnostics needs 'reference:', one of the runs {names}")
    if figure == "lines":
        _check_x(path, x, arms)
    return Experiment(
        name=name,
        description=str(data.get("description", "")),
        arms=arms,
        seeds=seed_count(data.get("seeds", 4), f"{path}: seeds"),
        metrics=list(data.get("metrics") or DEFAULT_METRICS),
        report=report,
        figure=figure,
        reference=reference,
        x=x,
    )


def _check_x(path: Path, x: Any, arms: list[Arm]) -> None:
    """A ``lines`` figure plots each arm at its value of the override ``x`` on a log axis: an
    arm that sets it sets a positive number; one that does not is a reference level (SASRec
    beside the LLMs' learning curve), and at least one arm sets it."""
    if not isinstance(x, str):
        raise ConfigError(f"{path}: figure lines needs 'x:', the override on the x axis")
    for arm in (a for a in arms if x in a.overrides):
        value = arm.overrides[x]
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError(
                f"{path}: run {arm.name} must set {x} to a positive number for the x axis "
                "(or leave it out to be drawn as a reference level)"
            )
    if all(x not in a.overrides for a in arms):
        raise ConfigError(f"{path}: figure lines needs a run that sets {x}, the x axis")


def arm_overrides(arm: Arm, base: Mapping[str, Any], seed_index: int, base_seed: int) -> dict:
    """The overrides of one run: the command line's, the arm's, then the seed."""
    overrides = {**base, **arm.overrides}
    if arm.seed_key is not None:
        overrides[arm.seed_key] = base_seed + seed_index
    return overrides


def overrides_for(overrides: Mapping[str, Any], readers: Mapping[str, set], arm: str) -> dict:
    """The keys (of the command line or a config file) one arm gets: those it reads, and those no
    arm reads (its config check then names them). A key only other arms read is left out, so
    ``--eval_users`` reaches table3's LLM arms without failing its ID arms."""
    anyone = set().union(*readers.values())
    return {k: v for k, v in overrides.items() if k in readers[arm] or k not in anyone}


def arm_hits(table: pd.DataFrame, arms: list[str], carried: list[str]) -> dict[str, pd.Series]:
    """Per-user hits@1 (mean over seeds) of each arm whose every run was read from a folder
    here: an arm with a run carried from an earlier results.csv has no per-user ranks."""
    away = set(table.loc[table["folder"].isin(carried), "arm"])
    folders = table.groupby("arm", sort=False)["folder"]
    return {
        a: mean_hits([Path(f) for f in folders.get_group(a)], k=1) for a in arms if a not in away
    }


def comparable_hr1(summary: pd.DataFrame) -> pd.Series:
    """Each arm's HR@1 on the users every arm ranked where the summary has that column (an ID
    model ranks all users, the LLM arms ``eval_users`` of them), else (an arm carried from an
    earlier results.csv, or no such column) its mean over its own users: what the best arm is
    chosen by and a figure's level shows."""
    hr1 = summary["hr@1 mean"]
    shared = next((c for c in summary.columns if c.startswith("hr@1 (")), None)
    return hr1 if shared is None else summary[shared].astype(float).fillna(hr1)


def shared_hr1(hits: Mapping[str, pd.Series]) -> pd.Series | None:
    """HR@1 of each arm on the users every arm scored, where the arms scored different users
    (``--eval_users`` samples the LLM arms' users; ID models score all): None where all agree."""
    shared = set.intersection(*(set(h.index) for h in hits.values()))
    if all(len(h) == len(shared) for h in hits.values()):
        return None
    users = sorted(shared)
    return pd.Series(
        {arm: h[users].mean() for arm, h in hits.items()}, name=f"hr@1 ({len(users)} shared users)"
    )


def valid_eval_hr1(rows: pd.DataFrame, arms: list[str]) -> pd.Series | None:
    """Each arm's valid HR@1 on its ``eval_valid_users`` (mean over seeds; NaN: an arm that
    ranked none, such as an ID model); None where no arm ranked any."""
    if not rows["valid_eval_hr@1"].notna().any():
        return None
    return rows.groupby("arm", sort=False)["valid_eval_hr@1"].mean().reindex(arms)


def paired_test(best: pd.Series, other: pd.Series) -> float:
    """p of the paired t-test of per-user hits on the users both scored (``compare``'s); 1.0
    where the two never differ."""
    users = best.index.intersection(other.index)
    if len(users) < 2:
        return 1.0
    return paired_hits(best[users].to_numpy(), other[users].to_numpy(), k=1)["t_test_p"]


def summary_table(rows: pd.DataFrame, metrics: list[str], arms: list[str]) -> pd.DataFrame:
    """Mean and std over seeds per arm and metric, arms in the experiment's order."""
    present = [m for m in metrics if m in rows.columns]
    grouped = rows.groupby("arm", sort=False)[present]
    table = grouped.mean().add_suffix(" mean").join(grouped.std(ddof=1).add_suffix(" std"))
    table["seeds"] = rows.groupby("arm", sort=False).size()
    return table.reindex(arms)


@dataclass(frozen=True)
class ExperimentRun:
    """One run of an experiment: an arm at one seed, with its overrides."""

    arm: Arm
    seed: int
    overrides: dict
    config: dict


def experiment_runs(
    name: str,
    dataset: str,
    plugins: Plugins,
    config_files: Iterable[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
    seeds: Any = None,
) -> tuple[Experiment, list[ExperimentRun]]:
    """The experiment ``name`` and its every run (``seeds`` overrides its count), each run's
    config checked before the first one starts."""
    from cprec_recbole.command import build_config
    from cprec_recbole.config_check import check_config, known_keys

    experiment = load_experiment(name, plugins.experiments.get(name), plugins.models.names())
    seeds = experiment.seeds if seeds is None else seed_count(seeds, "--seeds")
    config_files, overrides = list(config_files), dict(overrides or {})

    file_values: dict[str, Any] = {}  # routed to the arms like the command line's keys
    for path in config_files:
        file_values.update(read_yaml(Path(path)))
    readers = {
        arm.name: known_keys(
            arm.model,
            dataset,
            plugins.models.get(arm.model),
            plugins,
            {**file_values, **overrides, **arm.overrides},
        )
        for arm in experiment.arms
    }
    runs = []
    for arm in experiment.arms:
        from_files = overrides_for(file_values, readers, arm.name)
        given = overrides_for(overrides, readers, arm.name)
        first = build_config(
            arm.model, dataset, plugins, (), {**from_files, **given, **arm.overrides}
        )
        base_seed = int(first[arm.seed_key]) if arm.seed_key else 0
        for i in range(seeds if arm.seed_key else 1):
            wanted = arm_overrides(arm, given, i, base_seed)
            config = build_config(arm.model, dataset, plugins, (), {**from_files, **wanted})
            with within(f"experiment {experiment.name}, run {arm.name}"):
                check_config(config, plugins, config_files, wanted)
            runs.append(ExperimentRun(arm, i, {**from_files, **wanted}, config))
    return experiment, runs


def run_specs(runs: list[ExperimentRun]) -> list[RunSpec]:
    """The runs as the pipeline walks them (``pipeline.build_shared``, ``plan_groups``)."""
    return [RunSpec(f"{r.arm.name} seed {r.seed}", r.arm.model, RunConfig(r.config)) for r in runs]


def seed_count(value: Any, where: str) -> int:
    """A number of seeds: an integer >= 1 (``--seeds``, an experiment's ``seeds:``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be an integer >= 1, got {value!r}")
    return value


def run_experiment(
    experiment: Experiment,
    runs: list[ExperimentRun],
    dataset: str,
    plugins: Plugins,
    build: bool = True,
) -> Path:
    """Build the stages the runs share, run every arm over the seeds, then write the report;
    returns the experiment folder. ``build`` False (``--report``) builds nothing: the report
    holds the runs whose every stage is built and names the rest, so an experiment that takes
    days (the learning curve) says how far it has got while it runs."""
    name, seeds = experiment.name, 1 + max(one.seed for one in runs)
    folder = Path(runs[0].config["output_dir"]) / "experiments" / f"{name}-{dataset}"
    start = time.time()
    carried: list[str] = []
    if build:
        rows, pending = _run_all(experiment, runs, dataset, plugins), []
    else:
        rows, pending, carried = built_rows(runs, plugins, earlier_rows(folder / "results.csv"))
    if not rows:
        raise ConfigError(
            f"experiment {name}: no run is built yet, so there is nothing to report; run it "
            "without --report (--plan lists what each run needs)"
        )
    table = pd.DataFrame(rows)
    write_atomic(folder / "results.csv", lambda tmp: table.to_csv(tmp, index=False))
    archive(table.loc[~table["folder"].isin(carried), "folder"], folder / "stages")
    summary, best, anchor = summarise(table, experiment, carried)
    write_atomic(folder / "summary.csv", lambda tmp: summary.to_csv(tmp))
    seconds = time.time() - start
    report = render_report(
        experiment, dataset, summary, table, best, anchor, seeds, seconds, carried
    )
    report += _listed(
        f"Read from the earlier results.csv: {len(carried)} of {len(runs)} runs, whose final "
        "folder is not on this machine (their arms have no paired test: the per-user ranks "
        "are in that folder)",
        carried_lines(table, carried),
    )
    report += _listed(
        f"Not built yet ({len(pending)} of {len(runs)} runs; this report was written by "
        "`--report` from the others, and the same command without `--report` builds them)",
        pending,
    )
    if experiment.figure:
        title = f"{name} on {dataset}: test HR@1"
        figure(summary, folder / f"{name}.png", title, experiment)
        report += f"\n![{name}]({name}.png)\n"
    write_text(folder / "report.md", report)
    return folder


def _listed(heading: str, lines: list[str]) -> str:
    """A report's appendix: the heading and a bullet per line; nothing where there is none."""
    return f"\n{heading}:\n\n" + "".join(f"- {line}\n" for line in lines) if lines else ""


def summarise(
    table: pd.DataFrame, experiment: Experiment, carried: list[str]
) -> tuple[pd.DataFrame, str, str | None]:
    """Per arm (in the experiment's order): the metrics' mean and std over seeds, HR@1 on the
    users every arm ranked, valid HR@1 where ranked, and p of the paired test against the best
    arm whose per-user ranks are here; with the best arm and that one (None: no ranks here)."""
    arms = [a.name for a in experiment.arms if a.name in set(table["arm"])]
    summary = summary_table(table, experiment.metrics, arms)
    hits = arm_hits(table, arms, carried)
    shared = shared_hr1(hits) if hits else None
    if shared is not None:
        summary[shared.name] = shared
    valid = valid_eval_hr1(table, arms)
    if valid is not None:
        summary[VALID_EVAL] = valid
    hr1 = comparable_hr1(summary)
    anchor = hr1[list(hits)].idxmax() if hits else None
    summary["p vs best (hits@1)"] = [
        paired_test(hits[anchor], hits[a]) if a != anchor and a in hits else None for a in arms
    ]
    return summary, hr1.idxmax(), anchor


def _run_all(
    experiment: Experiment, runs: list[ExperimentRun], dataset: str, plugins: Plugins
) -> list[dict]:
    """Every run built (or reused) in order, the stages they share first: a row each."""
    from cprec_recbole.quick_start import run

    build_shared(run_specs(runs), plugins)
    rows = []
    progress = tqdm(runs, desc=f"experiment {experiment.name}", unit="run")
    for one in progress:
        progress.set_postfix_str(f"{one.arm.name} seed {one.seed}")
        began = time.time()
        with within(f"experiment {experiment.name}, run {one.arm.name} seed {one.seed}"):
            results = run(one.arm.model, dataset, (), one.overrides, plugins.files)
        rows.append(result_row(one, results, round(time.time() - began, 1)))
    progress.close()
    return rows


def built_rows(
    runs: list[ExperimentRun], plugins: Plugins, earlier: Mapping[str, dict]
) -> tuple[list[dict], list[str], list[str]]:
    """The rows of the built runs (:func:`~cprec_recbole.pipeline.is_built`), read from their
    final folders (nothing is built, and a stage another process is building is left alone);
    the rows ``earlier`` holds for runs whose final folder is not here (:func:`earlier_rows`);
    for each other run a line naming its stages that are not built yet, as ``--plan`` would;
    and the folders of the rows carried from ``earlier``."""
    from cprec_recbole.quick_start import results_of

    rows, pending, carried = [], [], []
    for one, spec in zip(runs, run_specs(runs), strict=True):
        walked, entries = walk(spec, plugins)
        final = f"{entries[-1].stage}/{entries[-1].hash}"
        if is_built(entries):
            rows.append(result_row(one, results_of(walked), None))
        elif final in earlier:
            row = {**earlier[final], "arm": one.arm.name, "model": one.arm.model}
            rows.append({**row, "seed": one.seed, "seconds": None})
            carried.append(row["folder"])
        else:
            left = [f"{e.stage} {e.hash} {e.state}" for e in entries if e.state != "cached"]
            pending.append(f"{spec.label}: {'; '.join(left)}")
    return rows, pending, carried


def earlier_rows(path: Path) -> dict[str, dict]:
    """The rows of an earlier ``results.csv`` by final stage (``eval/<hash>``), so a report
    keeps a run it once reported while that folder is not on this machine: a new machine starts
    without ``saved/``, and a stage's hash names the same run wherever it is built (rebuilt
    folders have been bit-identical). Copy a committed results.csv into the experiment folder
    to carry its runs. Rows read back as written; none where there is no such file."""
    if not path.is_file():
        return {}
    try:
        table = pd.read_csv(path).astype(object)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not a results.csv ({error}); restore or delete it") from None
    missing = {"arm", "seed", "hr@1", "folder"} - set(table.columns)
    if missing:
        raise ConfigError(
            f"{path}: a results.csv needs the columns {sorted(missing)}; restore or delete it"
        )
    rows = table.where(table.notna(), None).to_dict("records")
    return {"/".join(Path(str(row["folder"])).parts[-2:]): row for row in rows}


def carried_lines(table: pd.DataFrame, carried: list[str]) -> list[str]:
    rows = table[table["folder"].isin(carried)]
    return [f"{r.arm} seed {r.seed}: {r.folder}" for r in rows.itertuples()]


def archive(finals: Iterable[str], into: Path) -> None:
    """Copy each run's final folder that is an ``ARCHIVED`` stage to ``into/<stage>/<hash>/``
    (again where it was rebuilt since), so the report carries its runs' per-user ranks: ``rsync
    -a --ignore-existing <report>/stages/ <output_dir>/`` on another machine (README) makes
    those runs built there, for ``--report``, ``compare`` and the experiment itself."""
    for final in map(Path, finals):
        target = into / final.parent.name / final.name
        if final.parent.name not in ARCHIVED or _same_manifest(final, target):
            continue
        write_atomic_dir(
            target, partial(shutil.copytree, final, dirs_exist_ok=True, ignore=UNCOPIED)
        )


def _same_manifest(folder: Path, other: Path) -> bool:
    mine, theirs = folder / MANIFEST, other / MANIFEST
    return theirs.is_file() and mine.read_bytes() == theirs.read_bytes()


def result_row(one: ExperimentRun, results: Mapping[str, Any], seconds: float | None) -> dict:
    """A run's row of ``results.csv``: its test metrics, wall time here (None: only read),
    result folder and cost."""
    return {
        "arm": one.arm.name,
        "model": one.arm.model,
        "seed": one.seed,
        **{k: v for k, v in results["test"].items() if isinstance(v, int | float)},
        "valid_eval_hr@1": (results.get("valid_eval") or {}).get("hr@1"),
        "seconds": seconds,
        "folder": results["folder"],
        **cost_of(results["stages"]),
    }


def cost_of(stages: Mapping[str, str | Path | None]) -> dict[str, float | None]:
    """Training and inference wall time and peak memory, from the manifests of a run's stages
    (``results["stages"]``, in pipeline order): an LLM's training is its SFT (the paper's Table 7
    gives it per epoch), its CPT apart; a zero-shot LLM trains nothing. An ID or text model
    trains and tests in one stage (one peak for both)."""
    manifests = {k: read_manifest(Path(v)) or {} if v else {} for k, v in stages.items()}
    last = list(stages.values())[-1]
    results = json.loads((Path(last) / "results.json").read_text())
    final = list(manifests.values())[-1]
    train, epochs = final, results.get("epochs")
    if final.get("stage") == "eval":
        train = manifests.get("sft", {})
        epochs = len(train.get("metrics", {}).get("epochs", [])) or None
    train_s = train_seconds(train)
    return {
        "train_s": train_s,
        "epochs": epochs,
        "train_s_per_epoch": round(train_s / epochs, 1) if train_s and epochs else None,
        "train_peak_mb": train.get("peak_memory_mb"),
        "cpt_s": train_seconds(manifests.get("cpt")),
        "eval_s": results.get("eval_time_s"),
        "eval_peak_mb": final.get("peak_memory_mb"),
    }


def train_seconds(manifest: Mapping[str, Any] | None) -> float | None:
    """Training time of a stage: its loop's clock, which counts every process a resumed stage
    took, where it has one (SFT: the sum of its epochs), else the manifest's wall time."""
    if not manifest:
        return None
    metrics = manifest.get("metrics", {})
    if "train_time_s" in metrics:
        return metrics["train_time_s"]
    if metrics.get("epochs"):
        return round(sum(epoch["train_time_s"] for epoch in metrics["epochs"]), 2)
    return manifest.get("wall_time_s")


def _cell(mean: float, std: float) -> str:
    if mean is None or np.isnan(mean):
        return "-"
    return f"{mean:.4f}" if std is None or np.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def render_report(
    experiment: Experiment,
    dataset: str,
    summary: pd.DataFrame,
    rows: pd.DataFrame,
    best: str,
    anchor: str | None,
    seeds: int,
    seconds: float,
    carried: Iterable[str] = (),
) -> str:
    """report.md: the paper-style table (mean ± std over seeds, ``best`` in bold, p vs
    ``anchor``, the best arm whose per-user ranks are here, the same unless the best was
    carried from an earlier results.csv); the diagnostics read the runs ranked here."""
    against = f"against the best arm, **{best}**"
    if anchor is None:
        against = f"(none here: every arm was read from an earlier results.csv; best **{best}**)"
    elif anchor != best:
        against = (
            f"against the best arm whose per-user ranks are here, {anchor} (the best, **{best}**, "
            "was read from an earlier results.csv)"
        )
    metrics = [m for m in experiment.metrics if f"{m} mean" in summary.columns]
    extra = [c for c in summary.columns if c.startswith("hr@1 (") or c == VALID_EVAL]
    header = ["model", *metrics, *extra, "seeds", "p vs best"]
    lines = [
        f"# Experiment `{experiment.name}` on {dataset}",
        "",
        experiment.description.strip(),
        "",
        (
            f"Seeds: {seeds} (deterministic arms run once); {len(rows)} runs, {seconds:.0f} s "
            "(cached stages reused). p: paired t-test of per-user hits@1 (mean over seeds) "
            f"{against}; * marks p < 0.05."
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for arm, row in summary.iterrows():
        p = row["p vs best (hits@1)"]
        cells = [_cell(row[f"{m} mean"], row[f"{m} std"]) for m in metrics]
        cells += ["-" if pd.isna(row[c]) else f"{row[c]:.4f}" for c in extra]
        mark = "-" if p is None or pd.isna(p) else f"{p:.3g}{' *' if p < 0.05 else ''}"
        name = f"**{arm}**" if arm == best else arm
        lines.append("| " + " | ".join([name, *cells, str(int(row["seeds"])), mark]) + " |")
    if experiment.report == "buckets":
        lines += ["", "Test HR@1 by history length (mean over seeds):", "", _buckets(rows)]
    if experiment.report == "cost":
        lines += ["", "Cost per run (mean over seeds):", "", cost_table(rows)]
    if experiment.report == "diagnostics":
        arms = rows[~rows["folder"].isin(list(carried))].groupby("arm", sort=False)["folder"]
        folders = {arm: [Path(f) for f in group] for arm, group in arms}
        lines += diagnostics_section(folders, str(experiment.reference))
    return "\n".join(lines) + "\n"


def _buckets(rows: pd.DataFrame) -> str:
    columns = [c for c in rows.columns if c.startswith("hr@1[")]
    return markdown_table(rows.groupby("arm", sort=False)[columns].mean().reset_index(), ".4f")


COST_COLUMNS = {
    "epochs": "epochs",
    "train_s_per_epoch": "training s / epoch",
    "train_peak_mb": "training peak MB",
    "cpt_s": "CPT s",
    "eval_s": "inference s",
    "eval_peak_mb": "inference peak MB",
}


def cost_table(rows: pd.DataFrame) -> str:
    """The paper's Table 7 layout; '-' where a stage does not exist or predates its timer."""
    table = rows[list(COST_COLUMNS)].astype(float).groupby(rows["arm"], sort=False).mean()
    cells = table.map(lambda v: "-" if pd.isna(v) else f"{v:,.{0 if v == int(v) else 1}f}")
    return markdown_table(cells.reset_index().rename(columns=COST_COLUMNS))


def figure(summary: pd.DataFrame, path: Path, title: str, experiment: Experiment) -> None:
    """Mean test HR@1 per arm with the seeds' std: bars, a curve over the arms' order (the
    data-volume study: one arm per CPT checkpoint), or lines, one per model or arm ``line``,
    against each arm's value of the override ``x`` (the learning curve: HR@1 against SFT
    samples)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wide = experiment.figure != "lines"
    fig, ax = plt.subplots(figsize=(1.2 * len(summary) + 2 if wide else 9, 3.5))
    mean, std = summary["hr@1 mean"], summary["hr@1 std"].fillna(0)
    if experiment.figure == "bars":
        ax.bar(summary.index, mean, yerr=std, capsize=4, color="#4878a8")
    elif experiment.figure == "curve":
        ax.errorbar(summary.index, mean, yerr=std, marker="o", capsize=4, color="#4878a8")
    else:
        for arm, level in reference_levels(summary, experiment).items():
            ax.axhline(level, linestyle="--", color="#777777", label=arm)
        lines = lines_of(experiment, summary.index)
        for line, arms in lines.items():
            points = sorted((arm.overrides[experiment.x], arm.name) for arm in arms)
            xs, names = [p[0] for p in points], [p[1] for p in points]
            ax.errorbar(xs, mean[names], yerr=std[names], marker="o", capsize=4, label=line)
        ticks = sorted({arm.overrides[experiment.x] for arms in lines.values() for arm in arms})
        ax.set_xscale("log")  # sizes that double are evenly spaced
        ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(str(experiment.x))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")  # off the lines
    ax.set_ylabel("test HR@1")
    ax.set_title(title)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def lines_of(experiment: Experiment, names: Iterable[str]) -> dict[str, list[Arm]]:
    """The arms of each line (an arm's ``line``, else its model) among ``names`` (those built)
    that set ``x``, in the experiment's order: one line of a ``lines`` figure each."""
    wanted = set(names)
    lines: dict[str, list[Arm]] = {}
    for arm in (a for a in experiment.arms if a.name in wanted and experiment.x in a.overrides):
        lines.setdefault(arm.line or arm.model, []).append(arm)
    return lines


def reference_levels(summary: pd.DataFrame, experiment: Experiment) -> dict[str, float]:
    """HR@1 (:func:`comparable_hr1`) of each built arm that does not set ``x``: a level across
    a ``lines`` figure."""
    hr1 = comparable_hr1(summary)
    plain = [a.name for a in experiment.arms if experiment.x not in a.overrides]
    return {arm: float(hr1[arm]) for arm in plain if arm in summary.index}
