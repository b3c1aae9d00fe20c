"""A model's pipeline: the steps it declares, in order, each building or reusing one stage.

``CPRec.pipeline = ("data", "sasrec", "corpus", "cpt", "sft", "eval")``: the paper's pipeline, in
the model's own file. :func:`run_pipeline` walks it; a step runs one cached stage
(:mod:`cprec_recbole.stages`) from the folders of the steps before it, so model constructors build
objects and train nothing. A search or an experiment first builds, once, the stages two or more
of its runs share (:func:`build_shared`: found by walking each run's pipeline without building),
then each run the rest (a search's trials up to the step that validates).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cprec_recbole.errors import ConfigError
from cprec_recbole.plugins import Plugins
from cprec_recbole.run_config import RunConfig
from cprec_recbole.stages import PlanEntry, planning, read_manifest

logger = logging.getLogger(__name__)

#: The pipeline of a model class that declares none: a RecBole model, trained by the ID stage.
ID_PIPELINE = ("data", "rec_model")


@dataclass
class PipelineRun:
    """What the steps of one run share: its config, plugins, the stages to rebuild, the folder of
    every stage so far (None: a stage this model does not use) and the objects built from them."""

    model: str
    config: RunConfig
    plugins: Plugins
    force: frozenset[str] = frozenset()
    folders: dict[str, Path | None] = field(default_factory=dict)
    data: Any = None  # the data stage's PreparedData
    _recommender: Any = None

    @property
    def model_cls(self) -> type:
        return self.plugins.models.get(self.model)

    def recommender(self) -> Any:
        """The model object of an LLM pipeline, built once from the folders so far (its
        constructor reads them; it trains nothing). SFT and evaluation share it, so the model
        SFT trained is evaluated without a second load."""
        if self._recommender is None:
            self._recommender = self.model_cls(self.config, self.data, self.plugins, self.folders)
        return self._recommender


@dataclass(frozen=True)
class Step:
    """One step: ``run`` builds or reuses the ``stage`` folder and returns it; ``valid`` reads a
    validating step's valid metrics from its folder (what a search compares; the test split
    stays untouched). Which runs share a step is found by walking them (:func:`build_shared`)."""

    stage: str
    run: Callable[[PipelineRun], Path]
    valid: Callable[[Path], Mapping[str, Any]] | None = None


def _data(run: PipelineRun) -> Path:
    from cprec_recbole.data.prepare import prepare

    run.data = prepare(run.config, run.plugins, force="data" in run.force)
    return run.data.folder


def _item_text(run: PipelineRun) -> Path:
    from cprec_recbole.text_encoder import with_item_text

    run.config, folder = with_item_text(run.config, run.data, run.plugins, "item_text" in run.force)
    return folder


def _rec_model(run: PipelineRun) -> Path:
    from cprec_recbole.rec_model import train_rec_model

    force = "rec_model" in run.force
    return train_rec_model(run.model_cls, run.config, run.data, force=force)


def _sasrec(run: PipelineRun) -> Path:
    from cprec_recbole.llm.pipeline import train_sasrec

    return train_sasrec(run.config, run.data, run.plugins, force="rec_model" in run.force)


def _corpus(run: PipelineRun) -> Path:
    from cprec_recbole.data.corpus import corpus_stage
    from cprec_recbole.llm.cpt import cpt_config

    config = cpt_config(run.config, run.plugins)
    return corpus_stage(config, run.plugins, force="corpus" in run.force)


def _cpt(run: PipelineRun) -> Path:
    from cprec_recbole.llm.cpt import cpt_config, cpt_stage

    config = cpt_config(run.config, run.plugins)
    return cpt_stage(config, run.plugins, run.folders["corpus"], force="cpt" in run.force)


def _sft(run: PipelineRun) -> Path:
    return run.recommender().sft_folder(force="sft" in run.force)


def _eval(run: PipelineRun) -> Path:
    return run.recommender().evaluate(run.folders.get("sft"), force="eval" in run.force)


def _results_valid(folder: Path) -> Mapping[str, Any]:
    return json.loads((folder / "results.json").read_text())["valid"]


def _sft_valid(folder: Path) -> Mapping[str, Any]:
    return read_manifest(folder)["metrics"]["best_valid"]


STEPS: dict[str, Step] = {
    "data": Step("data", _data),
    "item_text": Step("item_text", _item_text),
    "rec_model": Step("rec_model", _rec_model, valid=_results_valid),  # a RecBole model
    # an LLM model's ID model (embedding_model, SASRec by default): stock settings plus
    # rec_model_overrides, as --model=<embedding_model> trains it
    "sasrec": Step("rec_model", _sasrec),
    "corpus": Step("corpus", _corpus),
    "cpt": Step("cpt", _cpt),
    "sft": Step("sft", _sft, valid=_sft_valid),
    "eval": Step("eval", _eval),
}


def pipeline_of(model_cls: type) -> tuple[str, ...]:
    """The step names ``model_cls`` declares (``pipeline``); a RecBole model's ID pipeline."""
    names = tuple(getattr(model_cls, "pipeline", ID_PIPELINE))
    unknown = [n for n in names if n not in STEPS]
    if unknown or not names or names[0] != "data":
        raise ConfigError(
            f"model {model_cls.__name__}: pipeline {names} must start with 'data' and use only "
            f"the steps {', '.join(STEPS)} (unknown: {', '.join(unknown) or 'none'})"
        )
    return names


def run_pipeline(
    model: str,
    config: RunConfig,
    plugins: Plugins,
    force: Iterable[str] = (),
    until: str | None = None,
) -> PipelineRun:
    """Run (or reuse) the steps of ``model``'s pipeline in order, up to and including the step
    ``until`` (all when None); the returned run holds every stage's folder."""
    run = PipelineRun(model, config, plugins, frozenset(force))
    names = pipeline_of(run.model_cls)
    stages = list(dict.fromkeys(STEPS[name].stage for name in names))
    unknown = sorted(run.force - set(stages))
    if unknown:
        raise ConfigError(
            f"--force={','.join(unknown)}: {model}'s pipeline has no such stage; it has "
            f"{', '.join(stages)}"
        )
    for name in names:
        step = STEPS[name]
        run.folders[step.stage] = step.run(run)
        if name == until:
            break
    return run


def validating_step(model_cls: type) -> str | None:
    """The last step of the pipeline that reports valid metrics (None: a model that trains on
    nothing it could be tuned by, such as a zero-shot LLM)."""
    names = [n for n in pipeline_of(model_cls) if STEPS[n].valid is not None]
    return names[-1] if names else None


def valid_metrics(run: PipelineRun, step: str) -> Mapping[str, Any]:
    return STEPS[step].valid(run.folders[STEPS[step].stage])


@dataclass(frozen=True)
class RunSpec:
    """One run of a search or an experiment: a model, its config, the step it stops after."""

    label: str
    model: str
    config: RunConfig
    until: str | None = None


def walk(spec: RunSpec, plugins: Plugins) -> tuple[PipelineRun, list[PlanEntry]]:
    """A run's pipeline walked without building (``stages.planning``): its stage folders, and
    the plan entry of each."""
    with planning() as entries:
        run = run_pipeline(spec.model, spec.config, plugins, until=spec.until)
    return run, entries


def is_built(entries: list[PlanEntry]) -> bool:
    """A walked run is built when its final stage is: that folder holds the run's result, and
    its hash covers every stage before it. Those may be gone (pruned to free disk: a 7B SFT is
    GBs) or never here (the final folder copied from the machine that built it)."""
    return bool(entries) and entries[-1].state == "cached"


def reuse_or_run(spec: RunSpec, plugins: Plugins, force: Iterable[str] = ()) -> PipelineRun:
    """The run read from its final folder where it is built (:func:`is_built`; nothing before
    it is loaded or needed, nor rebuilt where it was pruned), else run. ``force`` always runs."""
    force = list(force)
    if not force:
        walked, entries = walk(spec, plugins)
        if is_built(entries):
            logger.info(
                "stage %s: reusing %s, the run's result (the stages before it are not loaded)",
                entries[-1].stage,
                entries[-1].folder,
            )
            return walked
    return run_pipeline(spec.model, spec.config, plugins, force, until=spec.until)


def shared_folders(planned: Iterable[PipelineRun]) -> set[Path]:
    """The stage folders that two or more of the runs need."""
    counts = Counter(f for run in planned for f in set(run.folders.values()) if f is not None)
    return {folder for folder, n in counts.items() if n > 1}


def plan_groups(runs: list[RunSpec], plugins: Plugins) -> list[tuple[str, list[PlanEntry]]]:
    """The plan of several runs (``--plan`` of a search or an experiment): the stages two or
    more of them share, once, then each run's own."""
    walked = [walk(spec, plugins) for spec in runs]
    shared = {str(f) for f in shared_folders(run for run, _ in walked)}
    once = {e.folder: e for _, entries in walked for e in entries if e.folder in shared}
    groups = [("shared (built once, before the runs)", list(once.values()))]
    for spec, (_, entries) in zip(runs, walked, strict=True):
        groups.append((spec.label, [e for e in entries if e.folder not in shared]))
    return groups


def build_shared(runs: list[RunSpec], plugins: Plugins, force: Iterable[str] = ()) -> set[Path]:
    """Build, once and before the runs, every stage that two or more of the runs still to build
    share: each run's pipeline up to its last shared step, unless earlier runs built all its
    shared stages. A built run (:func:`is_built`) needs none of them, unless ``force`` rebuilds
    stages; those are rebuilt here (once), not in every run. Returns the shared folders."""
    force = list(force)
    walked = [(spec, *walk(spec, plugins)) for spec in runs]
    todo = [(spec, planned) for spec, planned, entries in walked if force or not is_built(entries)]
    shared, built = shared_folders(planned for _, planned in todo), set()
    for spec, planned in todo:
        steps = [s for s in pipeline_of(planned.model_cls) if planned.folders.get(STEPS[s].stage)]
        mine = [s for s in steps if planned.folders[STEPS[s].stage] in shared]
        folders = {planned.folders[STEPS[s].stage] for s in mine}
        if mine and not folders <= built:
            run_pipeline(spec.model, spec.config, plugins, force, until=mine[-1])
            built |= folders
    return shared
