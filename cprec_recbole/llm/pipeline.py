"""What every LLM recommender shares: the model object its SFT and evaluation stages build from.

A model class declares its pipeline (:mod:`cprec_recbole.pipeline`): LLaRA's is data -> SASRec
(for hybrid prompts) -> sft (LoRA + projector) -> eval; CPRec adds corpus -> cpt before sft. The
object is built from the folders of the stages before SFT and trains nothing itself; each stage
is cached under ``saved/<stage>/<hash>/``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cprec_recbole import distributed
from cprec_recbole.config import load_config
from cprec_recbole.data.candidates import draw_candidate_sets
from cprec_recbole.data.prepare import PreparedData
from cprec_recbole.data.windows import sliding_windows
from cprec_recbole.errors import ConfigError
from cprec_recbole.evaluation import first_pick_positions, orders_column, pick_orders
from cprec_recbole.llm.backbone import BACKBONE_KEYS, add_lora, add_special_tokens, load_backbone
from cprec_recbole.llm.batching import LLMSample, RenderContext, prompt_titles
from cprec_recbole.llm.inference import evaluate_sharded, item_embedding_context, output_metrics
from cprec_recbole.llm.loop import ADAPTER, CHECKPOINTS, load_adapter
from cprec_recbole.llm.projector import Projector
from cprec_recbole.llm.schedulers import schedule_keys
from cprec_recbole.llm.scoring import check_item_token_score
from cprec_recbole.llm.sft import SFTSetup, SFTTrainer, load_fine_tuned, save_fine_tuned
from cprec_recbole.plugins import Plugins
from cprec_recbole.rec_model import item_embedding_table, item_rows, train_rec_model
from cprec_recbole.results import write_ranks, write_results
from cprec_recbole.run_config import tracked
from cprec_recbole.stages import Stage, peak_memory_mb, read_manifest, run_stage
from cprec_recbole.text_encoder import with_item_text

logger = logging.getLogger(__name__)
#: Keys of an LLM model's config that change what SFT computes.
SFT_KEYS = (
    *BACKBONE_KEYS,
    "prompt_template",
    "text_template",
    "domain_noun",
    "max_title_tokens",
    "distinct_titles",
    "sft_samples",
    "epochs",
    "train_batch_size",
    "micro_batch_size",
    "learning_rate",
    "max_grad_norm",
    "autocast",
    "compile",
    "lr_scheduler",
    "warmup_ratio",
    "projector_decay",
    "stopping_step",
    "valid_users",
    "valid_inference",
    "valid_score_rule",
    "valid_score_max_tokens",
    "seed",
    "history_len",
    "min_history",
    # the generation knobs also decide SFT's validation, hence its early stopping
    "eval_rounds",
    "max_new_tokens",
    "cpt_checkpoint",
    "device",
    "eval_batch_users",
    # read by the validation SFT runs; the data stage's hash covers them too
    *("dataset", "model", "candidate_sampler", "num_negatives", "eval_seed", "sparsity_buckets"),
    # the training loss (appended last: the earlier keys keep their order)
    "sft_objective",
    "sft_objective_mix",
    "projector_warmup_samples",
    "item_token_score",
    "sft_holdout",
)
#: SFT keys added after SFT folders existed, with the value that trains what those folders hold
#: (hashed only when set otherwise: ``Stage.added``).
SFT_ADDED = {"projector_warmup_samples": 0, "item_token_score": False, "sft_holdout": 0}
EVAL_KEYS = (
    *("inference", "score_rule", "score_max_tokens", "merge_lora", "eval_users", "eval_seed"),
    "eval_item_embeddings",
    "eval_valid_users",
)
#: Eval keys added after eval folders existed (``Stage.added``), with SFT's.
EVAL_ADDED = {**SFT_ADDED, "eval_valid_users": 0}
#: Keys the LLM stages read that change no result: where things live, progress bars.
LLM_USES = (
    *("output_dir", "checkpoint_every", "show_progress", "backbone_cache"),
    "gradient_checkpointing",  # trades compute for activation memory; the same gradients
)
#: SFT validates with its own scoring keys, so a new test-time score rule reuses the SFT stage.
VALID_SCORING = {"score_rule": "valid_score_rule", "score_max_tokens": "valid_score_max_tokens"}


def validation_context(ctx: RenderContext) -> RenderContext:
    """The eval context SFT validates with: its ``valid_score_*`` keys in place of ``score_*``."""
    return replace(
        ctx, config=ctx.config.updated({k: ctx.config[v] for k, v in VALID_SCORING.items()})
    )


def sample_rows(rows: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """A seeded subset of at most ``limit`` rows, in the original order (all if None)."""
    if limit is None or limit >= len(rows):
        return rows
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), int(limit), replace=False))
    return rows.iloc[keep].reset_index(drop=True)


def to_samples(rows: pd.DataFrame) -> list[LLMSample]:
    return [
        LLMSample(u, list(h), list(c), t)
        for u, h, c, t in zip(rows["user_id"], rows["history"], rows["candidates"], rows["target"])
    ]


def train_sasrec(
    config: Mapping[str, Any], data: PreparedData, plugins: Plugins, force: bool = False
) -> Path:
    """The ID model of hybrid prompts (``embedding_model``, LLaRA's SASRec): stock settings
    (+ ``rec_model_overrides``), so its stage is the one ``--model=<embedding_model>`` trains;
    without the targets SFT trains on (``sft_holdout``)."""
    name = config["embedding_model"]
    cls = plugins.models.get(name)
    keep = {k: config[k] for k in ("data_path", "output_dir", "show_progress")}
    overrides = {**keep, **config["rec_model_overrides"]}
    if config["sft_holdout"]:
        overrides["train_holdout"] = config["sft_holdout"]
    rec_config = tracked(load_config(name, config["dataset"], cls, overrides=overrides))
    if "item_text" in getattr(cls, "pipeline", ()):  # MoRec: its item_text stage first
        rec_config, _ = with_item_text(rec_config, data, plugins)
    return train_rec_model(cls, rec_config, data, force=force)


class LLMRecommender:
    """Base of the LLM models: the zero-shot pipeline (data -> eval) and the stages' builds."""

    pipeline = ("data", "eval")

    def __init__(
        self,
        config: Mapping[str, Any],
        data: PreparedData,
        plugins: Plugins,
        folders: Mapping[str, Path | None],
    ):
        self.config, self.data, self.plugins = tracked(config), data, plugins
        self.template = plugins.prompt_templates.get(config["prompt_template"])
        text = config.get("text_template")
        self.text_template = plugins.prompt_templates.get(text) if text else None
        self.rec_folder = folders.get("rec_model")  # SASRec, for hybrid prompts
        self.cpt_folder = folders.get("cpt")  # the LoRA adapters SFT starts from
        self.fine_tunes = "sft" in self.pipeline

    @functools.cached_property
    def item_index(self) -> dict[str, int]:
        """Item id -> embedding row (the ID model's rows where its embeddings are used)."""
        if self.rec_folder is not None:
            return item_rows(self.rec_folder)
        return {item: row for row, item in enumerate(["[PAD]", *self.data.items["item_id"]])}

    def item_embeddings(self) -> torch.Tensor | None:
        if self.rec_folder is None:
            return None
        return item_embedding_table(self.rec_folder, self.plugins)

    def declared(self) -> dict:
        """The LLM stages' inputs and derived values (what the template and model names stand
        for) and the schedule's own keys: ``run_stage``'s arguments beyond stage and config."""
        factory = self.plugins.schedulers.get(self.config["lr_scheduler"])
        templates = [asdict(t) for t in (self.template, self.text_template) if t]
        return {
            "inputs": {
                "data": self.data.folder,
                "rec_model": self.rec_folder,
                "cpt": self.cpt_folder,
            },
            "derived": {"model": type(self).__name__, "templates": templates},
            "extra_reads": schedule_keys(factory),
        }

    def cpt_adapter(self) -> Path:
        """The CPT adapters to start from: the finished CPT's, or with ``cpt_checkpoint`` those
        of a kept checkpoint (``N``: after N samples, as in ``cpt_checkpoint_samples``; or a
        name: ``warmup``, ``stable``), for the paper's data-volume study (Fig. 5)."""
        wanted = self.config.get("cpt_checkpoint")
        if wanted is None:
            return self.cpt_folder / ADAPTER
        name = f"samples-{int(wanted)}" if isinstance(wanted, int | float) else str(wanted)
        path = self.cpt_folder / CHECKPOINTS / name / ADAPTER
        if not path.is_dir():
            kept = sorted(p.name for p in (self.cpt_folder / CHECKPOINTS).glob("[!.]*"))
            raise ConfigError(
                f"cpt_checkpoint={wanted!r}: no checkpoint {name} in {self.cpt_folder}; kept: "
                f"{', '.join(kept) or 'none'} (cpt_checkpoint_samples decides which are kept)"
            )
        return path

    # ---------------------------------------------------------------- backbone
    def load(self):
        """Backbone + special tokens (+ LoRA, projector) and the eval context."""
        titles = dict(zip(self.data.items["item_id"], self.data.items["title"]))
        corpus = [*titles.values(), self.template.text]
        model, tokenizer = load_backbone(self.config, self.plugins, corpus)
        tokens = [*self.template.special_tokens]
        if self.text_template is not None:
            tokens += self.text_template.special_tokens
        if tokens:
            add_special_tokens(model, tokenizer, list(dict.fromkeys(tokens)))
        titles = prompt_titles(tokenizer, titles, self.config)
        embeddings = self.item_embeddings()
        check_item_token_score(self.config, embeddings is not None)
        projector = None
        if embeddings is not None:
            torch.manual_seed(int(self.config["seed"]))
            projector = Projector(embeddings.shape[1], model.config.hidden_size)
            projector.to(device=model.device)  # fp32 weights: Adam on bf16 ones rounds updates away
            embeddings = embeddings.to(model.device)
        if self.fine_tunes or self.cpt_folder is not None:
            model = add_lora(model, self.config)
        if self.cpt_folder is not None:
            load_adapter(model, self.cpt_adapter())
        ctx = RenderContext(
            self.template,
            titles,
            self.item_index,
            str(self.config["domain_noun"]),
            self.config,
            embeddings,
            projector,
        )
        return model, tokenizer, ctx

    # ---------------------------------------------------------------- samples
    def train_windows(self) -> pd.DataFrame:
        rows = sliding_windows(
            self.data.sequences,
            int(self.config["history_len"]),
            int(self.config["min_history"]),
            drop_last=2,
            last=int(self.config["sft_holdout"]) or None,
        )
        return sample_rows(rows, self.config.get("sft_samples"), int(self.config["seed"]))

    def epoch_samples(self, windows: pd.DataFrame):
        """Training samples of an epoch: fixed windows, candidates redrawn every epoch."""
        sampler = self.plugins.candidate_samplers.get(self.config["candidate_sampler"])

        def samples(epoch: int) -> list[LLMSample]:
            seed = int(self.config["seed"]) * 1000 + epoch
            rows = draw_candidate_sets(
                self.data.inter, windows, int(self.config["num_negatives"]), seed, sampler
            )
            return to_samples(rows)

        return samples

    def eval_samples(self, split: str, limit_key: str) -> list[LLMSample]:
        rows = self.data.eval_rows(split)
        return to_samples(
            sample_rows(rows, self.config.get(limit_key), int(self.config["eval_seed"]))
        )

    # ---------------------------------------------------------------- run
    def validator(self, tokenizer, ctx: RenderContext):
        """SFT's validation: ``valid_inference`` on the validation users, their metrics."""
        samples = self.eval_samples("valid", "valid_users")
        evaluator = self.plugins.evaluators.get(self.config["valid_inference"])
        buckets = self.config["sparsity_buckets"]

        def validate(model) -> dict:
            out = evaluate_sharded(evaluator, model, tokenizer, samples, ctx)
            return output_metrics(out, samples, buckets)

        return validate

    def _sft(self, folder: Path) -> dict:
        model, tokenizer, ctx = self.load()
        valid_ctx = validation_context(ctx)
        setup = SFTSetup(
            tokenizer,
            self.template,
            self.text_template,
            valid_ctx,
            self.epoch_samples(self.train_windows()),
            self.validator(tokenizer, valid_ctx),
            self.plugins.schedulers.get(self.config["lr_scheduler"]),
        )
        metrics = SFTTrainer(model, ctx.projector, setup, self.config, folder).train()
        if distributed.is_main():
            save_fine_tuned(folder, model, ctx.projector)
        self._loaded = (model, tokenizer, ctx)
        return metrics

    def sft_folder(self, force: bool = False) -> Path:
        """Run (or reuse, or continue) the SFT stage."""
        return run_stage(SFT, self.config, **self.declared(), force=force, model=self)

    def evaluate(self, sft: Path | None, force: bool = False) -> Path:
        """Run (or reuse) the eval stage of the model fine-tuned in ``sft`` (None: as loaded)."""
        declared = self.declared()
        declared["inputs"]["sft"] = sft
        return run_stage(EVAL, self.config, **declared, force=force, model=self, sft=sft)

    def trained(self, sft: Path | None):
        """(model, tokenizer, ctx) as fine-tuned: kept from this process's SFT, else reloaded;
        with ``merge_lora`` the adapters are folded into the weights (inference only: on this
        CPU, unmerged LoRA in every layer makes each forward ~1.4x slower)."""
        loaded = getattr(self, "_loaded", None)
        if loaded is None:
            loaded = self.load()
            if sft is not None:
                load_fine_tuned(sft, loaded[0], loaded[2].projector)
        merge = getattr(loaded[0], "merge_and_unload", None)  # a peft model
        if self.config["merge_lora"] and merge is not None:
            loaded = (merge(), *loaded[1:])
        self._loaded = loaded
        return loaded

    def _eval(self, folder: Path, sft: Path | None) -> dict:
        model, tokenizer, ctx = self.trained(sft)
        mode, seed = self.config["eval_item_embeddings"], int(self.config["eval_seed"])
        ctx = item_embedding_context(ctx, mode, self.text_template, seed)
        evaluator = self.plugins.evaluators.get(self.config["inference"])
        start = time.time()
        test, n = self._score_split(folder, "test", "eval_users", evaluator, model, tokenizer, ctx)
        seconds = time.time() - start
        chosen = {}  # valid users scored as the test ones: what choosing between arms reads
        if self.config["eval_valid_users"]:
            valid = self._score_split(
                folder, "valid", "eval_valid_users", evaluator, model, tokenizer, ctx
            )
            chosen = {"valid_eval": valid[0]}
        results = {
            "model": self.config["model"],
            "dataset": self.config["dataset"],
            "backbone": self.config["llm_backbone"],
            "inference": self.config["inference"],
            "item_embeddings": mode,
            "test": test,
            "valid": read_manifest(sft)["metrics"]["best_valid"] if sft else None,
            **chosen,
            "eval_time_s": round(seconds, 1),
            "eval_users_per_s": round(n / max(seconds, 1e-9), 4),
            "peak_memory_mb": peak_memory_mb(),
            "candidates_sha256": self.data.candidate_digests(),
        }
        if distributed.is_main():
            write_results(folder, results)
        return results

    def _score_split(
        self, folder: Path, split: str, limit_key: str, evaluator, model, tokenizer, ctx
    ):
        """Rank ``split``'s users (``limit_key`` of them) and write ``<split>_ranks.tsv``: the
        metrics and how many users."""
        samples = self.eval_samples(split, limit_key)
        out = evaluate_sharded(evaluator, model, tokenizer, samples, ctx)
        ranks = {
            "user_id": [s.user_id for s in samples],
            "rank": out.ranks,
            "valid": out.valid,
            "history_len": [len(s.history) for s in samples],
            "answer": out.answers,
            "positive": [s.candidates.index(s.target) for s in samples],
        }
        if out.picks:
            candidates = [s.candidates for s in samples]
            ranks["top1"] = first_pick_positions(candidates, out.picks)
            ranks["order"] = orders_column(pick_orders(candidates, out.picks))
        if distributed.is_main():
            write_ranks(folder, pd.DataFrame(ranks), split)
        return output_metrics(out, samples, self.config["sparsity_buckets"]), len(samples)


def _build_sft(folder: Path, config, model: LLMRecommender) -> dict:
    return model._sft(folder)


def _build_eval(folder: Path, config, model: LLMRecommender, sft: Path | None) -> dict:
    return model._eval(folder, sft)


#: LoRA (+ projector) fine-tuned on the downstream domain (resumable: it checkpoints per epoch).
SFT = Stage(
    "sft",
    reads=SFT_KEYS,
    uses=LLM_USES,
    needs=("data", "rec_model", "cpt"),
    build=_build_sft,
    # 2: the projector trains in fp32 on a bf16 backbone (was bf16);
    # 3: the artifact is peft's adapter folder + projector.safetensors (was trainable.pt);
    # 4: each micro-batch's dropout masks seeded by (seed, step, index), as N ranks draw them
    version=4,
    resumable=True,
    distributed=True,
    added=SFT_ADDED,
)
#: Ranks of the test users' candidates; the model's results.
EVAL = Stage(
    "eval",
    reads=(*SFT_KEYS, *EVAL_KEYS),
    uses=LLM_USES,
    needs=("data", "rec_model", "cpt", "sft"),
    build=_build_eval,
    distributed=True,
    added=EVAL_ADDED,
)
