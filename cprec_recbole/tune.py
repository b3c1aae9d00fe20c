"""Ray Tune search over config keys: ``--tune=true`` (``tune_space``, default the downstream
learning rate {6e-4, 3e-4, 1e-4}, grid).

Trials share the stage cache: every stage folder is keyed by the config it reads and built under
a lock, so trials that need the same data, SASRec, corpus or CPT wait for one build and reuse it,
and trials that differ write different folders. The steps of the model's pipeline that no
searched key changes are built once before the trials start (``pipeline.build_shared``: for an
LLM learning-rate search, data, SASRec, corpus and CPT). A trial runs the pipeline up to its
validating step (ID models: their stage, which also tests; LLM models: SFT, which validates); the chosen trial, picked by valid hr@1 (x valid_ratio for generation), alone is
evaluated on test. With ``tune_workers_per_trial`` above 1 a trial is a Ray Train
``TorchTrainer`` run: its workers join one torch.distributed group, so the trial's stages train
and validate data-parallel exactly as under ``torchrun`` (cprec_recbole/distributed.py), and
rank 0's metrics reach Tune. Ray (>= 2.40) is the optional ``[tune]`` extra: :func:`prepare_search` joins
it (cprec_recbole/ray_cluster.py) before anything is written. The search is a ``ray.tune.Tuner``
under ``saved/tune/<model>-<dataset>-<hash>/ray``; run again, an interrupted search is restored
from there (``Tuner.restore``): finished trials are kept, errored or unfinished ones run again.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cprec_recbole.command import build_config
from cprec_recbole.config_check import check_config
from cprec_recbole.distributed import check_world_size
from cprec_recbole.errors import ConfigError, RunError, within
from cprec_recbole.io import write_json, write_text
from cprec_recbole.pipeline import (
    RunSpec,
    build_shared,
    reuse_or_run,
    valid_metrics,
    validating_step,
)
from cprec_recbole.plugins import Plugins, load_plugins
from cprec_recbole.ray_cluster import connect
from cprec_recbole.results import markdown_table
from cprec_recbole.run_config import RunConfig
from cprec_recbole.search_keys import TUNE_KEYS
from cprec_recbole.stages import config_hash

logger = logging.getLogger(__name__)
#: What a data-parallel trial's driver reserves: its process, which only waits on its workers
#: (Ray refuses a trial that reserves nothing; a CPU would starve the workers of a small node).
DRIVER_RESOURCES = {"cpu": 0, "memory": 256 * 2**20}


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
    """One Ray Tune trial: the base overrides plus its grid point, built in this process, or
    by ``tune_workers_per_trial`` Ray Train workers, whose rank 0 reports to Tune."""
    from ray import tune

    if setup["workers"] == 1:
        tune.report(trial_metrics(params["point"], setup))
    else:
        data_parallel_trial(params["point"], setup)


def trial_metrics(point: dict, setup: dict) -> dict[str, float]:
    """Build the trial's pipeline up to its validating step; its selection score and valid
    metrics."""
    import torch

    torch.set_num_threads(setup["threads"])
    plugins = load_plugins(setup["plugin_files"])
    overrides = {**setup["overrides"], **point, "tune": False}
    config = build_config(
        setup["model"], setup["dataset"], plugins, setup["config_files"], overrides
    )
    step = validating_step(plugins.models.get(setup["model"]))
    spec = RunSpec(setup["model"], setup["model"], RunConfig(config), until=step)
    run = reuse_or_run(spec, plugins)
    valid = valid_metrics(run, step)
    numbers = {f"valid_{k}": v for k, v in valid.items() if isinstance(v, int | float)}
    return {"score": selection_score(valid), **numbers}


def trial_worker(loop_config: dict) -> None:
    """One rank of a data-parallel trial. Every rank reports (Ray Train's report is a barrier);
    Ray keeps rank 0's metrics."""
    from ray import train

    train.report(trial_metrics(loop_config["point"], loop_config["setup"]))


def data_parallel_trial(point: dict, setup: dict) -> None:
    """Run the trial as a ``TorchTrainer`` over ``setup["workers"]`` workers (Ray Train joins
    them in a gloo or NCCL group); ``TuneReportCallback`` passes rank 0's report to Tune."""
    from ray import tune
    from ray.train import RunConfig as TrainRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    per_worker = setup["worker_resources"]
    trainer = TorchTrainer(
        trial_worker,
        train_loop_config={"point": point, "setup": setup},
        scaling_config=ScalingConfig(
            num_workers=setup["workers"],
            use_gpu=per_worker["GPU"] > 0,
            resources_per_worker=per_worker,
        ),
        run_config=TrainRunConfig(
            storage_path=setup["train_storage"],
            name=tune.get_context().get_trial_name(),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def trial_resources(config: Mapping) -> dict[str, float]:
    """What a trial uses in all (its workers together): where there are GPUs, one per worker
    unless ``tune_gpus_per_trial`` says otherwise, and their share of the cores; else all
    cores, unless ``tune_cpus_per_trial`` says fewer (then trials run side by side)."""
    import torch

    workers = int(config["tune_workers_per_trial"])
    gpus = torch.cuda.device_count()
    wanted = config.get("tune_gpus_per_trial")
    gpu = (float(workers) if wanted is None else float(wanted)) if gpus else 0.0
    cores = os.cpu_count() or 1
    share = max(1, int(cores * min(1.0, gpu / gpus))) if gpu else cores
    cpus = config.get("tune_cpus_per_trial") or max(workers, share)
    return {"cpu": float(cpus), "gpu": gpu}


def placement(resources: Mapping[str, float], workers: int) -> dict[str, Any]:
    """The trial's Tune resources, each worker's Ray Train resources and its torch threads:
    one worker runs in the trial itself; several share the trial's resources evenly and the
    trial's driver reserves only :data:`DRIVER_RESOURCES`."""
    cpu, gpu = resources["cpu"] / workers, resources["gpu"] / workers
    return {
        "trial": dict(resources) if workers == 1 else DRIVER_RESOURCES,
        "worker_resources": {"CPU": cpu, "GPU": gpu},
        "threads": max(1, int(cpu)),
    }


def concurrent_trials(resources: Mapping[str, float], cluster: Mapping[str, float]) -> int:
    """How many data-parallel trials fit the cluster at once: their drivers would otherwise all
    start and wait for workers (Ray Train's advice: cap ``max_concurrent_trials``)."""
    fits = [cluster.get(k.upper(), 0.0) // v for k, v in resources.items() if v]
    return max(1, int(min(fits, default=1)))


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
            check_world_size(trial_config, int(config["tune_workers_per_trial"]))
        specs.append(RunSpec(f"trial {i} {point}", model, RunConfig(trial_config), step))
    return points, specs


def search_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides every trial shares: the command's, less the search's own keys."""
    return {k: v for k, v in overrides.items() if k not in TUNE_KEYS}


@dataclass
class Search:
    """A checked search: its grid points, each trial's run, and what every trial shares (the
    command's overrides less the search's keys, paths absolute; config files resolved)."""

    points: list[dict[str, Any]]
    specs: list[RunSpec]
    overrides: dict[str, Any]
    config_files: list[str]


def run_tune(
    model: str,
    dataset: str,
    config: dict,
    plugins: Plugins,
    search: Search,
    plugin_files: Iterable[str | Path],
    force: Iterable[str] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the search :func:`prepare_search` checked and write the trial table; returns the
    chosen point and the search's summary (:func:`record_choice` adds the chosen point's test
    results)."""
    points, specs = search.points, search.specs
    overrides, config_files = search.overrides, search.config_files
    plugin_files = [str(Path(p).resolve()) for p in plugin_files]
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
    workers = int(config["tune_workers_per_trial"])
    setup = {
        "model": model,
        "dataset": dataset,
        "overrides": overrides,
        "config_files": config_files,
        "plugin_files": plugin_files,
        "force": [],  # forced stages are rebuilt once, by build_shared, not by every trial
        "workers": workers,
        "train_storage": str(folder / "train"),
        **placement(resources, workers),
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
    import ray
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(trial, setup=setup), setup["trial"])
    at_once = (
        None if setup["workers"] == 1 else concurrent_trials(resources, ray.cluster_resources())
    )
    if tune.Tuner.can_restore(folder / "ray"):  # an interrupted search: keep its finished trials
        logger.info("tune: resuming the search in %s", folder / "ray")
        tuner = tune.Tuner.restore(str(folder / "ray"), trainable, restart_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"point": tune.grid_search(points)},
            tune_config=tune.TuneConfig(metric="score", mode="max", max_concurrent_trials=at_once),
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


def prepare_search(
    model: str,
    config: Mapping,
    plugins: Plugins,
    config_files: Iterable[str | Path],
    overrides: Mapping[str, Any],
) -> Search:
    """Check every trial's config (a model no trial can change, a bad grid point, workers that
    cannot share a step), then join Ray (``ray_address``, or a local one): all before the
    command writes anything."""
    shared = absolute_paths(search_overrides(overrides))
    files = [str(Path(p).resolve()) for p in config_files]
    points, specs = trial_specs(model, config["dataset"], config, plugins, files, shared)
    connect(config.get("ray_address"))
    return Search(points, specs, shared, files)


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
