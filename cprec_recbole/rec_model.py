"""The ID-model stage: train a RecBole sequential model, early-stop on valid hr@1, test it.

Its folder keeps the best checkpoint (``model.pth``), the results and per-user ranks, so LLaRA can
reuse the SASRec it trained for its item embeddings.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.dataloader import AbstractDataLoader
from recbole.data.dataset import Dataset
from recbole.utils import init_seed

from cprec_recbole.compat import load_checkpoint, no_argv
from cprec_recbole.data.prepare import PreparedData
from cprec_recbole.errors import ConfigError
from cprec_recbole.evaluation import orders_column
from cprec_recbole.io import write_text
from cprec_recbole.plugins import Plugins
from cprec_recbole.results import write_ranks, write_results
from cprec_recbole.run_config import RunConfig
from cprec_recbole.search_keys import TUNE_KEYS
from cprec_recbole.stages import EVERY, Stage, peak_memory_mb, read_manifest, run_stage
from cprec_recbole.trainer import CandidateEvalData, CandidateTrainer

logger = logging.getLogger(__name__)
#: Keys that describe where things live or how they are shown, not what is computed.
NOT_HASHED = {
    *("output_dir", "data_path", "show_progress", "plugins", "state", "gpu_id", "force"),
    *("extra_keys", "download"),  # unread keys; fetching raw files
    "item_text_folder",  # a path; its stage's name (item_text_stage) is hashed
    *TUNE_KEYS,
}


#: Raw item id per embedding row of a trained model (row 0: padding), one per line.
ITEM_TOKENS = "item_tokens.txt"


def item_rows(folder: Path) -> dict[str, int]:
    """Raw item id -> embedding row of the model trained in ``folder``."""
    ids = (folder / ITEM_TOKENS).read_text().split("\n")
    return {item: row for row, item in enumerate(ids)}


def item_embedding_table(folder: Path, plugins: Plugins) -> torch.Tensor:
    """The item embeddings of the model trained in ``folder``, fp32: the e_i of hybrid prompts.
    A model whose item vectors are computed rather than a table (MoRec's, from text) says how
    from its checkpoint: ``item_table(state_dict)``; others keep ``item_embedding.weight``."""
    state = load_checkpoint(folder / "model.pth")["state_dict"]
    manifest = read_manifest(folder)
    if manifest is None:
        raise ConfigError(f"{folder} has no manifest.json: not a finished rec_model stage")
    table = getattr(plugins.models.get(manifest["config"]["model"]), "item_table", None)
    if table is not None:
        return table(state).float()
    if "item_embedding.weight" not in state:
        raise ConfigError(
            f"{folder / 'model.pth'}: model {manifest['config']['model']} has no "
            "item_embedding.weight and no item_table(state_dict) that computes its item "
            "vectors; hybrid prompts need one of the two (embedding_model)"
        )
    return state["item_embedding.weight"].float()


def train_row_mask(users: np.ndarray, rows_per_user: np.ndarray, holdout: int = 0) -> np.ndarray:
    """Which rows of RecBole's train split (sorted by user, one per target) to train on: those
    whose target comes before the user's valid and test items and the ``holdout`` training items
    before them. RecBole's leave-one-out leaves a user with two rows one eval row (the test),
    so without this the valid item of every user with 3 interactions is trained on."""
    ends = np.flatnonzero(np.r_[users[1:] != users[:-1], True])
    run = np.repeat(np.arange(len(ends)), np.diff(np.r_[-1, ends]))
    from_end = ends[run] - np.arange(len(users))  # among the user's train rows
    left_out = np.minimum(2, rows_per_user[users] - 1)  # RecBole's valid and test rows
    return from_end + left_out >= 2 + holdout


def train_split(rb_config: Config, dataset: Dataset) -> AbstractDataLoader:
    """RecBole's train dataloader, without the valid targets it leaks and the held-out ones."""
    train_data, _, _ = data_preparation(rb_config, dataset)
    field, train = dataset.uid_field, train_data._dataset
    rows = np.bincount(dataset.inter_feat[field].numpy(), minlength=dataset.user_num)
    keep = train_row_mask(train.inter_feat[field].numpy(), rows, int(rb_config["train_holdout"]))
    train = train.copy(train.inter_feat[torch.from_numpy(np.flatnonzero(keep))])
    return type(train_data)(rb_config, train, train_data._sampler, shuffle=rb_config["shuffle"])


def recbole_config(model_cls: type, config: dict, data: PreparedData, folder: Path) -> Config:
    """RecBole's Config for the prepared dataset; our chronological order survives its sort."""
    overrides = {
        **config,
        "data_path": str(data.folder),
        "dataset": data.name,
        "checkpoint_dir": str(folder),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": int(config["history_len"]),
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "valid_metric": "hr@1",
    }
    overrides.pop("model", None)
    with no_argv():
        return Config(model=model_cls, dataset=data.name, config_dict=overrides)


def _train(folder: Path, config: RunConfig, model_cls: type, data: PreparedData) -> dict:
    rb_config = recbole_config(model_cls, config, data, folder)
    init_seed(rb_config["seed"], rb_config["reproducibility"])
    dataset = create_dataset(rb_config)
    train_data = train_split(rb_config, dataset)
    init_seed(rb_config["seed"] + rb_config["local_rank"], rb_config["reproducibility"])
    model = model_cls(rb_config, train_data._dataset).to(rb_config["device"])
    edges = list(config["sparsity_buckets"])
    trainer = CandidateTrainer(rb_config, model, folder, edges)
    max_len = int(config["history_len"])
    valid = CandidateEvalData.build(data.eval_rows("valid"), dataset, max_len)
    test_rows = data.eval_rows("test")
    test = CandidateEvalData.build(test_rows, dataset, max_len)
    tokens = dataset.field2id_token[dataset.iid_field]
    write_text(folder / ITEM_TOKENS, "\n".join(tokens))  # embedding row -> raw item id
    start = time.time()
    show = bool(config["show_progress"])
    trainer.fit(train_data, valid, saved=True, show_progress=show)
    train_time = time.time() - start
    start = time.time()
    test_result = trainer.evaluate(test, load_best_model=True, show_progress=show)
    eval_time = time.time() - start
    ranks = {
        "user_id": test.user_ids,
        "rank": trainer.last_ranks,
        "history_len": test.item_seq_len,
        "positive": test.target_index,
        "top1": trainer.last_top1,
        "order": orders_column(trainer.last_orders),
    }
    write_ranks(folder, pd.DataFrame(ranks))
    results = {
        "model": config["model"],
        "dataset": config["dataset"],
        "valid": trainer.best_valid_result,
        "test": test_result,
        "candidates_sha256": data.candidate_digests(),
        "train_time_s": round(train_time, 1),
        "epochs": len(trainer.train_loss_dict),
        "eval_time_s": round(eval_time, 1),
        "peak_memory_mb": peak_memory_mb(),
    }
    write_results(folder, results)
    return results


#: A RecBole model trained on the prepared data; RecBole reads its whole config, so the hash
#: covers every key but those in ``NOT_HASHED``.
REC_MODEL = Stage(
    "rec_model",
    reads=EVERY,
    uses=tuple(sorted(NOT_HASHED)),
    needs=("data",),
    build=_train,
    # 2: no longer trains on the valid item of a user with 3 interactions (``train_row_mask``)
    version=2,
)


def train_rec_model(
    model_cls: type, config: RunConfig, data: PreparedData, force: bool = False
) -> Path:
    """Run (or reuse) the ``rec_model`` stage for this model, dataset and hyperparameters."""
    inputs = {"data": data.folder}
    return run_stage(REC_MODEL, config, inputs, force=force, model_cls=model_cls, data=data)
