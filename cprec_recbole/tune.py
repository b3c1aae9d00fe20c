"""Ray Tune search over config keys: ``--tune=true`` (``tune_space``, default the downstream
learning rate {6e-4, 3e-4, 1e-4}, grid).

Trials share the stage cache: every stage folder is keyed by the config it reads and built under
a lock, so trials that need the same data, SASRec, corpus or CPT wait for one build and reuse it,
and trials that differ write different folders. The steps of the model's pipeline that no
searched key changes are built once before the trials start (``pipeline.build_shared``: for an
LLM learning-rate search, data, SASRec, corpus and CPT). A trial runs the pipeline up to its
validating step (ID models: their stage, which also tests; LLM models: SFT, which validates); the chosen trial, picked by valid hr@1 (x valid_ratio for generation), alone is
evaluated on test. Ray (>= 2.40) is the optional ``[tune]`` extra: :func:`prepare_search` joins
it (cprec_recbole/ray_cluster.py) before anything is written. The search is a ``ray.tune.Tuner``
under ``saved/tune/<model>-<dataset>-<hash>/ray``; run again, an interrupted search is restored
from there (``Tuner.restore``): finished trials are kept, errored or unfinished ones run again.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cprec_recbole.command import build_config
from cprec_recbole.config_check import check_config
from cprec_recbole.errors import ConfigError, RunError, within
from cprec_recbole.io import write_json, write_text
from cprec_recbole.pipeline import (
    RunSpec,
    build_shared,
    run_pipeline,
    valid_metrics,
    validating_step,
)
from cprec_recbole.plugins import Plugins, load_plugins
from cprec_recbole.ray_cluster import connect
from cprec_recbole.results import markdown_table
from cprec_recbole.run_config import RunConfig
from cprec_recbole.stages import config_hash

logger = logging.getLogger(__name__)
#: Keys of the search itself: never part of a trial's stages.
TUNE_KEYS = ("tune", "tune_space", "tune_cpus_per_trial", "tune_gpus_per_trial", "ray_address")


def grid(space: Mapping[str, Iterable]) -> list[dict[str, Any]]:
    """Every combination of the listed values, in the order they are listed."""
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"tune_space must map config keys to lists of values, got {space!r}")
    keys = list(space)
    values = [v if isinstance(v, list | tuple) else [v] for v in space.values()]
    empty = [key for key, listed in zip(keys, values, strict=True) if not listed]
    if empty:
        raise ConfigError(f"tune_space lists no values for {', '.join(map(str, empty))}")
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def selection_score(valid: Mapping[str, float]) -> float:
    """valid hr@1, times valid_ratio where answers can be invalid (generation)."""
    return float(valid["hr@1"]) * float(valid.get("valid_ratio", 1.0))


def absolute_paths(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Ray runs trials in other processes: paths must not depend on the working directory."""
    out = dict(overrides)
    for key in ("data_path", "output_dir"):
        if out.get(key):
            out[key] = str(Path(out[key]).resolve())
    return out


def trial(params: dict, setup: dict) -> None:
    """One Ray Tune trial: the base overrides plus its grid point, reported to Tune."""
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(setup["cpus"])))
    plugins = load_plugins(setup["plugin_files"])
    overrides = {**setup["overrides"], **params["point"], "tune": False}
    config = build_config(
        setup["model"], setup["dataset"], plugins, setup["config_files"], overrides
    )
    step = validating_step(plugins.models.get(setup["model"]))
    run = run_pipeline(setup["model"], RunConfig(config), plugins, until=step)
    valid = valid_metrics(run, step)
    numbers = {f"valid_{k}": v for k, v in valid.items() if isinstance(v, int | float)}
    tune.report({"score": selection_score(valid), **numbers})


def trial_resources(config: Mapping) -> dict[str, float]:
    """One GPU per trial where there are GPUs (``tune_gpus_per_trial``), else CPUs: all of them
    unless ``tune_cpus_per_trial`` says fewer (then trials run side by side)."""
    import torch

    gpus = torch.cuda.device_count()
    cpus = config.get("tune_cpus_per_trial") or max(1, (os.cpu_count() or 1) // max(gpus, 1))
    wanted = config.get("tune_gpus_per_trial")
    gpu = (1 if wanted is None else float(wanted)) if gpus else 0
    return {"cpu": float(cpus), "gpu": float(gpu)}


def trial_specs(
    model: str,
    dataset: str,
    config: Mapping,
    plugins: Plugins,
    config_files: list[str],
    overrides: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], list[RunSpec]]:
    """The grid's points and each trial's run (checked, all before any trial starts): the
    pipeline up to its validating step."""
    step = validating_step(plugins.models.get(model))
    if step is None:
        raise ConfigError(f"--tune=true: model {model} trains nothing, so no trial can differ")
    points = grid(config.get("tune_space"))
    specs = []
    for i, point in enumerate(points):
        wanted = {**overrides, **point}
        with within(f"tune_space point {point}"):
            trial_config = build_config(model, dataset, plugins, config_files, wanted)
            check_config(trial_config, plugins, config_files, wanted)
        specs.append(RunSpec(f"trial {i} {point}", model, RunConfig(trial_config), step))
    return points, specs


def search_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides every trial shares: the command's, less the search's own keys."""
    return {k: v for k, v in overrides.items() if k not in TUNE_KEYS}


def run_tune(
    model: str,
    dataset: str,
    config: dict,
    plugins: Plugins,
    config_files: Iterable[str | Path],
    overrides: Mapping[str, Any],
    plugin_files: Iterable[str | Path],
    force: Iterable[str] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Search ``tune_space`` and write the trial table; returns the chosen point and the
    search's summary (:func:`record_choice` adds the chosen point's test results)."""
    overrides = absolute_paths(search_overrides(overrides))
    config_files = [str(Path(p).resolve()) for p in config_files]
    plugin_files = [str(Path(p).resolve()) for p in plugin_files]
    points, specs = trial_specs(model, dataset, config, plugins, config_files, overrides)
    space_key = config_hash(
        {
            "model": model,
            "dataset": dataset,
            "overrides": overrides,
            "files": config_files,
            "space": config["tune_space"],
        }
    )
    folder = Path(config["output_dir"]).resolve() / "tune" / f"{model}-{dataset}-{space_key}"
    logger.info("tune: %d trials of %s on %s into %s", len(points), model, dataset, folder)
    build_shared(specs, plugins, force)
    resources = trial_resources(config)
    setup = {
        "model": model,
        "dataset": dataset,
        "overrides": overrides,
        "config_files": config_files,
        "plugin_files": plugin_files,
        "force": [],  # forced stages are rebuilt once, by build_shared, not by every trial
        "cpus": resources["cpu"],
    }
    table = fit_trials(points, setup, resources, folder)
    best = table.loc[table["score"].idxmax()]
    chosen = points[int(best["trial"])]
    write_text(folder / "trials.md", _markdown(table, chosen))
    logger.info("tune: chosen %s (valid score %.4f)\n%s", chosen, best["score"], table.to_string())
    summary = {
        "chosen": chosen,
        "valid_score": float(best["score"]),
        "trials": len(points),
        "tune_folder": str(folder),
    }
    return chosen, summary


def fit_trials(points: list[dict], setup: dict, resources: dict, folder: Path) -> pd.DataFrame:
    """Run a Ray Tune grid trial per point (or restore an interrupted search, keeping its
    finished trials) on the Ray that :func:`prepare_search` joined, and write ``trials.csv``; a
    failed or unstarted trial stops the search with one line that says where each trial's error
    is."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(trial, setup=setup), resources)
    if tune.Tuner.can_restore(folder / "ray"):  # an interrupted search: keep its finished trials
        logger.info("tune: resuming the search in %s", folder / "ray")
        tuner = tune.Tuner.restore(str(folder / "ray"), trainable, restart_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"point": tune.grid_search(points)},
            tune_config=tune.TuneConfig(metric="score", mode="max"),
            run_config=tune.RunConfig(storage_path=str(folder), name="ray", verbose=0),
        )
    table = trial_table(tuner.fit(), points)
    write_text(folder / "trials.csv", table.to_csv(index=False))
    failed = table[table["error"].notna()]
    if len(failed) or len(table) < len(points):
        first = failed.iloc[0]["error"].splitlines()[0] if len(failed) else "never started"
        raise RunError(
            f"tune: {len(points) - len(table) + len(failed)} of {len(points)} trials failed or "
            f"never started ({first}); run the command again to resume; each trial's error is "
            f"in {folder / 'trials.csv'}, Ray's logs under {folder}"
        )
    return table


def prepare_search(model: str, config: Mapping, plugins: Plugins) -> None:
    """Refuse a model no trial can change, then join Ray (``ray_address``, or a local one):
    both before the command writes anything."""
    if validating_step(plugins.models.get(model)) is None:
        raise ConfigError(f"--tune=true: model {model} trains nothing, so no trial can differ")
    connect(config.get("ray_address"))


def record_choice(summary: Mapping[str, Any], results: Mapping[str, Any]) -> dict:
    """The search's summary with the chosen point's test results, written as ``chosen.json``."""
    summary = {**summary, "test": results["test"], "folder": results["folder"]}
    write_json(Path(summary["tune_folder"]) / "chosen.json", summary)
    return summary


def trial_table(grid_results, points: list[dict]) -> pd.DataFrame:
    """One row per trial: its point, score, valid metrics, error."""
    rows = []
    for result in grid_results:
        params = result.config  # the trial's Tune parameters
        if params is None:  # a trial that never started (its driver stopped first)
            continue
        point = params["point"]
        metrics = result.metrics or {}
        rows.append(
            {
                "trial": points.index(point),
                **point,
                "score": metrics.get("score"),
                **{k[6:]: v for k, v in metrics.items() if k.startswith("valid_")},
                "error": repr(result.error) if result.error else None,
            }
        )
    return pd.DataFrame(rows).sort_values("trial").reset_index(drop=True)


def _markdown(table: pd.DataFrame, chosen: dict) -> str:
    shown = markdown_table(table.drop(columns=["error"]))
    return f"{shown}\n\nchosen: {chosen} (valid hr@1 x valid_ratio)\n"
