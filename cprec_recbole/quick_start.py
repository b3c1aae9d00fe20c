"""``run(model, dataset, ...)``: a command end to end: its config, its model's pipeline (or a
search over it), its results; ``plan`` shows the pipeline's stages without building them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from cprec_recbole import distributed
from cprec_recbole.command import setup
from cprec_recbole.logs import setup_logging
from cprec_recbole.pipeline import (
    PipelineRun,
    RunSpec,
    plan_groups,
    reuse_or_run,
    run_pipeline,
)
from cprec_recbole.plugins import Plugins
from cprec_recbole.results import table
from cprec_recbole.run_config import RunConfig
from cprec_recbole.stages import PlanEntry, planning

logger = logging.getLogger(__name__)


def run(
    model: str,
    dataset: str,
    config_files: Iterable[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
    plugin_files: Iterable[str | Path] = (),
    force: Iterable[str] = (),
) -> dict:
    """Run ``model`` on ``dataset`` end to end; returns the results dict (valid and test
    metrics, ``folder``: the stage holding them, ``stages``: every stage's folder)."""
    config, plugins, plugin_files = setup(model, dataset, config_files, overrides, plugin_files)
    launch(config)
    search = None
    if config.get("tune"):  # a search that cannot start stops before any log is written
        from cprec_recbole.tune import prepare_search

        search = prepare_search(model, config, plugins, config_files, overrides or {})
    rank = f"-rank{distributed.rank()}" if distributed.world_size() > 1 else ""
    setup_logging(Path(config["output_dir"]) / "log", f"{model}-{dataset}{rank}")
    logger.info(
        "config of this run:\n%s", yaml.safe_dump(config.as_dict(), sort_keys=True).rstrip()
    )
    if search is not None:
        from cprec_recbole.tune import record_choice, run_tune

        chosen, summary = run_tune(model, dataset, config, plugins, search, plugin_files, force)
        chosen_overrides = {**(overrides or {}), **chosen, "tune": False}  # the chosen trial
        results = run(model, dataset, config_files, chosen_overrides, plugin_files)  # on test
        return {**results, "tune": record_choice(summary, results)}
    results = results_of(reuse_or_run(RunSpec(model, model, config), plugins, force))
    logger.info("results in %s\n%s", results["folder"], table(results))
    return results


def launch(config: RunConfig) -> None:
    """What a data-parallel launch needs, checked before anything is written (a world size
    that divides each step's micro-batches, the device, a local backbone folder), then the
    ranks' process group joined (a no-op in one process)."""
    distributed.check_world_size(config, distributed.launched_world_size())
    cuda = False
    if config.get("llm_backbone") is not None:  # an LLM model: its device and backbone
        from cprec_recbole.llm.backbone import check_local_path, resolve_device

        check_local_path(config)
        cuda = resolve_device(config).type == "cuda"
    distributed.init_from_env(cuda)


def results_of(run: PipelineRun) -> dict:
    """The results its last stage wrote (``results.json``), with that folder and every stage's."""
    folder = list(run.folders.values())[-1]
    results = json.loads((folder / "results.json").read_text())
    results["folder"] = str(folder)
    results["stages"] = {k: str(v) if v else None for k, v in run.folders.items()}
    return results


def plan(
    config: RunConfig,
    plugins: Plugins,
    config_files: Iterable[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
    force: Iterable[str] = (),
) -> list[tuple[str, list[PlanEntry]]]:
    """The stages ``run`` would build or reuse for a ``setup`` config, without building any
    (``--plan``): one group (the run), or with ``tune`` the stages the trials share, then each
    trial's own."""
    model, dataset = config["model"], config["dataset"]
    if config.get("tune"):
        from cprec_recbole.tune import search_overrides, trial_specs

        searched = search_overrides(overrides or {})
        _, specs = trial_specs(model, dataset, config, plugins, list(config_files), searched)
        return plan_groups(specs, plugins)
    with planning() as entries:
        run_pipeline(model, config, plugins, force)
    return [(f"{model} on {dataset}", entries)]
