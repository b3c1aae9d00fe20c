"""CPRec's all-domain continual pre-training (paper section 4.4), a cached, resumable stage.

LoRA on the backbone, one epoch over the behaviour corpus rendered with the unified text-only
template, causal-LM loss on the answer, data ordered by phase and the learning rate driven by the
same phase boundaries (counted in samples, turned into optimizer steps). The ablations of the
paper's Fig. 4 differ only in data order and in which phases the schedule has:

- ``DS+Mix(A)`` (CPRec): shuffled domain-specific samples (warm-up = their first
  ``cpt_warmup_ratio``, then stable), then shuffled mixed samples (annealing);
- ``DS+Mix(S)``: the same order, the mixed samples at the stable rate (no annealing);
- ``DS+Mix(N)``: everything shuffled together, same phase lengths as A;
- ``DS``: domain-specific samples only, warm-up then stable (there is nothing to anneal on).

DS and DS+Mix(S) take the very same first steps as CPRec (same micro-batches, same rates: the
plan cuts its length groups where the mixed block starts), so a variant starts from another
variant's furthest checkpoint that it shares (DS is CPRec's run at the stable phase end) instead
of recomputing those steps; see :meth:`CPT._shared_prefix`.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from cprec_recbole import distributed
from cprec_recbole.data.corpus import (
    CORPUS,
    Corpus,
    corpus_domains,
    load_corpus,
    resolve_cpt_domains,
)
from cprec_recbole.errors import ConfigError
from cprec_recbole.io import write_atomic_dir
from cprec_recbole.llm.backbone import BACKBONE_KEYS, add_lora, keep_backbone, load_backbone
from cprec_recbole.llm.batching import encode_batch, prompt_titles
from cprec_recbole.llm.loop import (
    ADAPTER,
    CHECKPOINTS,
    STATE,
    LoopArguments,
    Plan,
    TrainLoop,
    adam,
    batch_steps,
    checkpoints,
    group_steps,
    save_adapter,
)
from cprec_recbole.llm.losses import answer_loss
from cprec_recbole.llm.names import VARIANTS
from cprec_recbole.llm.projector import model_device
from cprec_recbole.llm.schedulers import learning_rates, plot_schedule, schedule_keys
from cprec_recbole.plugins import Plugins
from cprec_recbole.run_config import RunConfig, tracked
from cprec_recbole.stages import Stage, read_manifest, run_stage, stage_folder

logger = logging.getLogger(__name__)
PHASES = ("warmup", "stable", "annealing")
#: Keys that change what CPT computes (plus the corpus stage, the template text and the
#: schedule's own keys). ``checkpoint_every`` is absent: where a run checkpoints changes nothing.
CPT_KEYS = (
    *BACKBONE_KEYS,
    "max_title_tokens",
    "distinct_titles",
    "cpt_template",
    "cpt_variant",
    "cpt_scheduler",
    "cpt_warmup_ratio",
    "cpt_samples",
    "cpt_mixed_samples",
    "cpt_batch_size",
    "cpt_micro_batch_size",
    "cpt_length_grouped",
    "cpt_seed",
    "cpt_checkpoint_samples",
    "eta_l",
    "eta_h",
    "max_grad_norm",
    "autocast",
    "compile",
    "device",
    "add_domain",
    "resume_from",
    "cpt_domains",
)


def _subset(indices: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or limit >= len(indices):
        return indices
    return np.sort(rng.choice(indices, int(limit), replace=False))


def variant_order(
    phase: np.ndarray,
    variant: str,
    seed: int,
    warmup_ratio: float,
    ds_limit: int | None = None,
    mixed_limit: int | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Training order (corpus row indices) and phase ends in samples (``warmup``, ``stable``,
    ``total``) of an ablation variant; ``phase`` is the corpus' 0 = domain-specific, 1 = mixed."""
    if variant not in VARIANTS:
        raise ConfigError(
            f"config key 'cpt_variant' must be one of {', '.join(VARIANTS)}; found {variant!r}"
        )
    rng = np.random.default_rng(seed)
    ds = rng.permutation(_subset(np.flatnonzero(phase == 0), ds_limit, rng))
    mixed = rng.permutation(_subset(np.flatnonzero(phase == 1), mixed_limit, rng))
    if variant == "DS":
        mixed = mixed[:0]
    order = np.concatenate([ds, mixed])
    if variant == "DS+Mix(N)":
        order = rng.permutation(order)
    warmup = round(warmup_ratio * len(ds))
    stable = len(order) if variant in ("DS", "DS+Mix(S)") else len(ds)
    mixed_from = None if variant == "DS+Mix(N)" else len(ds)  # where the mixed block starts
    return order, {
        "warmup": warmup,
        "stable": stable,
        "total": len(order),
        "mixed_from": mixed_from,
    }


def length_grouped(
    ids: np.ndarray, lengths: np.ndarray, micro: int, seed: int, mega: int = 64
) -> list[list[int]]:
    """Micro-batches of similar prompt length (little padding): sort each run of ``mega``
    micro-batches' worth of samples by length, cut, and shuffle the micro-batches in the run."""
    rng = np.random.default_rng(seed)
    out: list[list[int]] = []
    for start in range(0, len(ids), micro * mega):
        chunk = ids[start : start + micro * mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        micros = [chunk[i : i + micro].tolist() for i in range(0, len(chunk), micro)]
        out += [micros[i] for i in rng.permutation(len(micros))]
    return out


def cpt_plan(
    order: np.ndarray,
    phases: dict[str, int],
    lengths: np.ndarray | None,
    micro: int,
    accumulate: int,
    seed: int,
    checkpoint_samples=(),
) -> tuple[Plan, dict[str, int]]:
    """Steps phase by phase (a phase boundary is always a step boundary, and so is the start of
    the mixed block, ``mixed_from``), named checkpoints at phase ends and at
    ``checkpoint_samples``; returns the plan and the phase ends in steps."""
    bounds = [0, phases["warmup"], phases["stable"], phases["total"]]
    steps: list[list[list[int]]] = []
    ends: dict[str, int] = {}
    for name, lo, hi in zip(PHASES, bounds, bounds[1:]):
        cut = phases.get("mixed_from")
        for a, b in ((lo, cut), (cut, hi)) if cut is not None and lo < cut < hi else ((lo, hi),):
            part = order[a:b]
            if lengths is None:
                steps += batch_steps(part.tolist(), micro, accumulate)
            else:
                steps += group_steps(length_grouped(part, lengths, micro, seed + a), accumulate)
        ends[name] = len(steps)
    plan = Plan(steps)
    names: dict[int, list[str]] = {}
    for n in checkpoint_samples or ():
        if int(n) <= phases["total"]:
            names.setdefault(plan.step_after_samples(int(n)), []).append(f"samples-{int(n)}")
    for name in PHASES:
        if ends[name] > 0:
            names.setdefault(ends[name], []).insert(0, name)
    plan.checkpoints = names
    return plan, {"warmup": ends["warmup"], "stable": ends["stable"], "total": len(steps)}


def sample_lengths(corpus: Corpus, title_tokens: np.ndarray, template_tokens: int) -> np.ndarray:
    """Prompt + answer tokens of every corpus sample, from per-item title token counts (a
    vectorised estimate: separators and the template's own words count as ``template_tokens``),
    read shard by shard so the corpus is never whole in memory."""
    padded = np.append(title_tokens, 0)  # code -1 (padding) looks up the appended 0
    out = np.zeros(len(corpus), dtype=np.int64)
    for at, rows in corpus.chunks():
        out[at] = (
            padded[rows.history].sum(1)
            + padded[rows.candidates].sum(1)
            + padded[rows.target]
            + template_tokens
            + 2 * ((rows.history >= 0).sum(1) + rows.candidates.shape[1])
        )
    return out


def cpt_declared(config: RunConfig, plugins: Plugins, corpus_folder: Path) -> dict:
    """The CPT stage's inputs, derived values (the template's text) and the schedule's own keys:
    ``run_stage``'s and ``stage_folder``'s arguments beyond the stage and config."""
    template = plugins.prompt_templates.get(config["cpt_template"])
    return {
        "inputs": {"corpus": corpus_folder},
        "derived": {"template": asdict(template)},
        "extra_reads": cpt_extra_reads(config, plugins),
    }


class CPT:
    """One CPT run: corpus -> plan -> the shared training loop -> adapters."""

    def __init__(self, config: dict, plugins: Plugins, corpus_folder: Path):
        self.config, self.plugins, self.corpus_folder = config, plugins, corpus_folder
        self.template = plugins.prompt_templates.get(config["cpt_template"])
        self.factory = plugins.schedulers.get(config["cpt_scheduler"])

    def build(self, folder: Path, config: RunConfig, base: Path | None = None) -> dict:
        corpus = load_corpus(self.corpus_folder)
        model, tokenizer = load_backbone(
            config, self.plugins, [*corpus.titles.values(), self.template.text]
        )
        titles = prompt_titles(tokenizer, corpus.titles, config)
        # LoRA's init and dropout masks follow cpt_seed, not what ran before in this process
        # (a cached SASRec stage, or an experiment's earlier runs, would otherwise change them).
        torch.manual_seed(int(config["cpt_seed"]))
        model = add_lora(model, config)
        micro = int(config["cpt_micro_batch_size"])
        accumulate = max(1, math.ceil(int(config["cpt_batch_size"]) / micro))
        lengths = self._lengths(corpus, tokenizer, titles)
        grouped = lengths if config["cpt_length_grouped"] else None
        prefix = None
        if config.get("add_domain"):
            order, phases, plan, step_phases = self._reanneal_plan(
                folder, base, corpus, grouped, micro, accumulate
            )
        else:
            plan_of = functools.partial(self._plan, corpus, grouped, micro, accumulate)
            order, phases, plan, step_phases = plan_of(config["cpt_variant"])
            prefix = self._shared_prefix(folder, plan_of, plan, self._rates(step_phases))
        eta_h = float(config["eta_h"])
        optimizer = adam(model, None, eta_h)
        scheduler = self.factory(optimizer, step_phases, self._schedule_config())
        if config.get("plot_schedule") and distributed.is_main():
            self._plot(folder, plan, step_phases)
        args = LoopArguments.from_config("cpt", config, int(config["cpt_seed"]))
        loop = TrainLoop(model, None, optimizer, scheduler, folder, args)
        device = model_device(model)

        def loss_fn(step: int, ids: list[int]):
            batch = encode_batch(
                tokenizer, self.template, corpus.samples(ids), titles, {}, "item", with_answer=True
            ).to(device)
            return answer_loss(model, batch, None, None)

        train = loop.run(plan, loss_fn)
        if distributed.is_main():
            save_adapter(model, folder / ADAPTER)
        keep_backbone(model.unload(), tokenizer)  # SFT in this process starts from this base
        mixed = int((corpus.phase[order] == 1).sum())
        return {
            **train,
            "samples": len(order),
            "domain_specific_samples": len(order) - mixed,
            "mixed_samples": mixed,
            "tokens": int(lengths[order].sum()),
            "phases_in_samples": phases,
            "phases_in_steps": step_phases,
            "checkpoints": sorted({n for names in plan.checkpoints.values() for n in names}),
            "started_from": prefix,
        }

    def _plan(self, corpus: Corpus, lengths, micro: int, accumulate: int, variant: str):
        """(order, phases in samples, plan, phases in steps) of one ablation variant."""
        config, seed = self.config, int(self.config["cpt_seed"])
        order, phases = variant_order(
            corpus.phase,
            variant,
            seed,
            float(config["cpt_warmup_ratio"]),
            config.get("cpt_samples"),
            config.get("cpt_mixed_samples"),
        )
        kept = config.get("cpt_checkpoint_samples")
        plan, step_phases = cpt_plan(order, phases, lengths, micro, accumulate, seed, kept)
        return order, phases, plan, step_phases

    def _schedule_config(self) -> RunConfig:
        return self.config.updated(
            min_lr_ratio=float(self.config["eta_l"]) / float(self.config["eta_h"])
        )

    def _rates(self, step_phases: dict) -> np.ndarray:
        """The learning rate of every step of a plan with these phase ends."""
        return learning_rates(
            self.factory, step_phases, self._schedule_config(), float(self.config["eta_h"])
        )

    def _shared_prefix(self, folder: Path, plan_of, plan: Plan, rates: np.ndarray) -> dict | None:
        """Start a fresh run from another variant's furthest checkpoint whose steps this run
        would take identically: the same micro-batches and the same rate at every step before it.
        The copy is the state this run would reach there (restoring a checkpoint continues
        bit-identically, as the resume test checks); the rate for the next step is this run's."""
        if checkpoints(folder / CHECKPOINTS) or not distributed.is_main():
            return None  # this run's own checkpoints: a resume; or rank 0 copies them
        best: tuple[int, Path] | None = None
        for variant in VARIANTS:
            other = self.config.updated(cpt_variant=variant)
            declared = cpt_declared(other, self.plugins, self.corpus_folder)
            donor = stage_folder(CPT_STAGE, other, **declared)
            if variant == self.config["cpt_variant"] or not (donor / CHECKPOINTS).is_dir():
                continue
            _, _, theirs, their_phases = plan_of(variant)
            their_rates = self._rates(their_phases)
            # not the rolling ones: one may vanish while a running donor trains on
            for step, path in checkpoints(donor / CHECKPOINTS, rolling=False):
                same = (
                    step <= len(plan.steps)
                    and theirs.steps[:step] == plan.steps[:step]
                    and np.array_equal(their_rates[:step], rates[:step])
                )
                if same and (best is None or step > best[0]):
                    best = (step, path)
        if best is None:
            return None
        step, path = best
        for at, other in checkpoints(path.parent, rolling=False):  # named ones up to there
            if at > step:
                continue
            names = plan.checkpoints.get(at) or []
            if other == path and not names:
                names = [f"shared-{path.parent.parent.name}-{path.name}"]
            for name in names:
                _copy_checkpoint(other, at, folder / CHECKPOINTS / name, rates)
        logger.info(
            "cpt: starting from %s at step %d/%d (shared with that run)",
            path,
            step,
            len(plan.steps),
        )
        return {"stage": path.parent.parent.name, "checkpoint": path.name, "steps": step}

    def _lengths(self, corpus: Corpus, tokenizer, titles: dict) -> np.ndarray:
        codes = np.arange(len(corpus.titles))
        ids = tokenizer([titles[c] for c in codes], add_special_tokens=False)["input_ids"]
        title_tokens = np.array([len(i) for i in ids])
        fixed = len(tokenizer(self.template.text, add_special_tokens=True)["input_ids"])
        return sample_lengths(corpus, title_tokens, fixed)

    def _plot(self, folder: Path, plan: Plan, step_phases: dict) -> None:
        rates = self._rates(step_phases)
        edges = plan.cumulative
        bounds = [0, step_phases["warmup"], step_phases["stable"], step_phases["total"]]
        spans = {
            p: (int(edges[a]), int(edges[b]))
            for p, a, b in zip(PHASES, bounds, bounds[1:])
            if b > a
        }
        plot_schedule(
            folder / "lr_schedule.png",
            rates,
            plan.samples_per_step,
            spans,
            f"CPT {self.config['cpt_variant']}, {self.config['cpt_scheduler']} schedule",
        )

    def _reanneal_plan(
        self, folder: Path, base: Path, corpus: Corpus, lengths, micro: int, accumulate: int
    ):
        """``--resume_from=stable --add_domain=X``: continue the base run from its stable
        checkpoint (its warm-up and stable steps stand as done, empty here) and anneal on the
        mixed samples of the corpus that now includes X."""
        stable = base / CHECKPOINTS / "stable"
        manifest = read_manifest(base)
        if manifest is None or not stable.is_dir():
            raise ConfigError(
                f"resume_from=stable: no finished CPT run with a 'stable' checkpoint at {base}; "
                "run the same command without add_domain and resume_from first"
            )
        done = manifest["metrics"]["phases_in_steps"]
        seed = int(self.config["cpt_seed"])
        rng = np.random.default_rng(seed + 1)
        mixed = rng.permutation(
            _subset(np.flatnonzero(corpus.phase == 1), self.config.get("cpt_mixed_samples"), rng)
        )
        phases = {"warmup": 0, "stable": 0, "total": len(mixed)}  # all annealing
        anneal, _ = cpt_plan(mixed, phases, lengths, micro, accumulate, seed)
        plan = Plan([[[]] for _ in range(done["stable"])] + anneal.steps)
        plan.checkpoints = {len(plan.steps): ["annealing"]}
        target = folder / CHECKPOINTS / "stable"
        if not any((folder / CHECKPOINTS).glob("[!.]*")) and distributed.is_main():
            shutil.copytree(stable, target)
        step_phases = {"warmup": done["warmup"], "stable": done["stable"], "total": len(plan.steps)}
        return mixed, phases, plan, step_phases


def _copy_checkpoint(source: Path, step: int, target: Path, rates: np.ndarray) -> None:
    """Copy a checkpoint of another run (``step`` steps done), the rate of its next step set to
    ``rates``' (this run's schedule); renamed into place when whole, so a kill leaves no half
    copy."""

    def fill(tmp: Path) -> None:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        if step < len(rates):
            state = torch.load(tmp / STATE, map_location="cpu", weights_only=False)
            for group in state["optimizer"]["param_groups"]:
                group["lr"] = float(rates[step])
            if "_last_lr" in state["scheduler"]:  # LambdaLR's record of the rate it set
                state["scheduler"]["_last_lr"] = [float(rates[step])] * len(
                    state["scheduler"]["_last_lr"]
                )
            torch.save(state, tmp / STATE)

    write_atomic_dir(target, fill)


def base_cpt_folder(config: RunConfig, plugins: Plugins) -> Path:
    """The CPT stage folder of the run that ``add_domain`` continues (same config, base domains),
    computed without building anything (a missing base run is reported by the CPT build)."""
    base = config.without("add_domain", "resume_from").updated(
        cpt_domains=[d for d in config["cpt_domains"] if d != config["add_domain"]]
    )
    corpus = stage_folder(CORPUS, base, derived=corpus_domains(base, plugins)[1])
    return stage_folder(CPT_STAGE, base, **cpt_declared(base, plugins, corpus))


def _build_cpt(
    folder: Path, config: RunConfig, plugins: Plugins, corpus: Path, base: Path | None
) -> dict:
    return CPT(config, plugins, corpus).build(folder, config, base)


#: LoRA adapters continually pre-trained on the corpus (resumable: it checkpoints as it goes).
CPT_STAGE = Stage(
    "cpt",
    reads=CPT_KEYS,
    uses=(
        *("output_dir", "checkpoint_every", "show_progress", "plot_schedule", "backbone_cache"),
        "gradient_checkpointing",
    ),
    needs=("corpus",),
    build=_build_cpt,
    version=2,  # dropout masks seeded by (cpt_seed, step, micro-batch), as N ranks draw them
    resumable=True,
    distributed=True,
)


def cpt_config(config: RunConfig, plugins: Plugins) -> RunConfig:
    """The config of the corpus and CPT stages: with ``add_domain``, the base run's domains plus
    the added one (checked: a new domain, continued from the stable checkpoint)."""
    config = tracked(config)
    added = config.get("add_domain")
    if not added:
        return config
    domains = resolve_cpt_domains(config.updated(add_domain=None), plugins)
    if added in domains:
        raise ConfigError(
            f"add_domain {added!r} is already a CPT domain of the base run "
            f"({', '.join(domains)}); list the base run's domains in cpt_domains"
        )
    if config.get("resume_from") != "stable":
        raise ConfigError(
            "add_domain needs resume_from: stable (re-anneal from the stable checkpoint)"
        )
    return config.updated(cpt_domains=[*domains, added])


def cpt_extra_reads(config: RunConfig, plugins: Plugins) -> tuple[str, ...]:
    """The keys of the CPT schedule's own (a plugin scheduler may read its own keys)."""
    return tuple(schedule_keys(plugins.schedulers.get(config["cpt_scheduler"])))


def cpt_stage(config: RunConfig, plugins: Plugins, corpus: Path, force: bool = False) -> Path:
    """Run (or reuse, or continue after a kill) the CPT stage on the ``corpus`` stage folder;
    ``config`` as :func:`cpt_config` makes it."""
    base = base_cpt_folder(config, plugins) if config.get("add_domain") else None
    declared = cpt_declared(config, plugins, corpus)
    return run_stage(
        CPT_STAGE, config, **declared, force=force, plugins=plugins, corpus=corpus, base=base
    )
