"""The data stage: domain -> k-core + user sample -> chronological split -> fixed candidate sets.

Its folder holds what every model reads: RecBole atomic files whose ``timestamp`` is the
chronological position (so RecBole's own sort reproduces our order exactly, ties included), the
item titles, and the persisted candidate sets of the valid and test splits.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from cprec_recbole.config import PROPERTIES
from cprec_recbole.data.atomic import sort_interactions
from cprec_recbole.data.candidates import (
    draw_candidate_sets,
    load_candidate_sets,
    save_candidate_sets,
)
from cprec_recbole.data.domain import AtomicFileDomain, not_found_message
from cprec_recbole.data.transforms import k_core, leave_one_out, sample_users, user_sequences
from cprec_recbole.errors import DataError
from cprec_recbole.io import write_atomic
from cprec_recbole.plugins import Plugins, unknown_name
from cprec_recbole.run_config import RunConfig
from cprec_recbole.stages import Stage, run_stage

logger = logging.getLogger(__name__)
SPLITS = ("valid", "test")


@dataclass
class PreparedData:
    """A prepared dataset: its folder, interactions, titles, sequences and candidate sets."""

    name: str
    folder: Path
    history_len: int

    @cached_property
    def _frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return _read(self.folder, self.name)  # on first use: ``--plan`` needs only the folder

    @property
    def inter(self) -> pd.DataFrame:
        return self._frames[0]

    @property
    def items(self) -> pd.DataFrame:
        return self._frames[1]

    @cached_property
    def sequences(self) -> pd.Series:
        return user_sequences(self.inter)

    def candidate_path(self, split: str) -> Path:
        return self.folder / "candidates" / f"{split}.tsv"

    def candidate_digests(self) -> dict[str, str]:
        """sha256 of each persisted candidate file, recorded in every model's results."""
        return {
            split: hashlib.sha256(self.candidate_path(split).read_bytes()).hexdigest()
            for split in SPLITS
        }

    def eval_rows(self, split: str) -> pd.DataFrame:
        """user_id, history (last ``history_len`` items), target, candidates of one split."""
        rows = leave_one_out(self.sequences, split, self.history_len)
        sets = load_candidate_sets(self.candidate_path(split))
        merged = rows.merge(sets, on=["user_id", "target"], how="inner", validate="1:1")
        if len(merged) != len(sets):
            raise DataError(f"{self.candidate_path(split)} does not match the {split} split")
        return merged


def resolve_domain(config: dict, plugins: Plugins):
    """The dataset's domain: a registered one, or atomic files under ``data_path``."""
    name = config.get("domain") or config["dataset"]
    if name in plugins.domains:
        return plugins.domains.get(name)
    domain = AtomicFileDomain(name)
    if domain.exists(config["data_path"]):
        return domain
    data_path = Path(config["data_path"])
    known = set(plugins.domains.names()) | {p.stem for p in (PROPERTIES / "dataset").glob("*.yaml")}
    if data_path.is_dir():
        known |= {p.name for p in data_path.iterdir() if (p / f"{p.name}.inter").is_file()}
    raise unknown_name(
        "dataset", name, known, hint=not_found_message(name, domain.paths(data_path)[0])
    )


def domain_source(domain, config: dict):
    """What identifies a domain's data in a stage key: its fingerprint (files' names, sizes,
    contents), or, for a domain without one, its class and attributes (edits to its files then
    go unseen). Not its repr: a plain class's has a memory address, new in every process."""
    if hasattr(domain, "fingerprint"):
        return domain.fingerprint(config)
    kind = type(domain)
    return {
        "class": f"{kind.__module__}.{kind.__qualname__}",
        "attributes": dict(sorted(getattr(domain, "__dict__", {}).items())),
    }


def _check_ids(inter: pd.DataFrame, name: str) -> None:
    for column in ("user_id", "item_id"):
        bad = inter[column].str.contains(r"\s", regex=True)
        if bad.any():
            raise DataError(
                f"{name}: {column} {inter.loc[bad.idxmax(), column]!r} contains whitespace; "
                "ids must be single tokens"
            )


def _build(folder: Path, config: RunConfig, domain, plugins: Plugins) -> dict:
    name = config["dataset"]
    inter, items = domain.load(config)
    _check_ids(inter, name)
    inter = sort_interactions(inter)  # a plugin's rows may come in any order
    inter = sample_users(
        inter, config.get("user_sample_num"), config.get("user_sample_ratio"), config["data_seed"]
    )
    inter = k_core(inter, int(config["k_core"]), name)
    items = items[items["item_id"].isin(inter["item_id"])].sort_values("item_id")
    atomic = inter[["user_id", "item_id"]].assign(
        timestamp=range(len(inter)), time=inter["timestamp"].to_numpy()
    )
    atomic.columns = ["user_id:token", "item_id:token", "timestamp:float", "time:float"]
    write_atomic(
        folder / name / f"{name}.inter",
        lambda tmp: atomic.to_csv(tmp, sep="\t", index=False, quoting=csv.QUOTE_NONE),
    )
    write_atomic(
        folder / "items.tsv",
        lambda tmp: items.to_csv(tmp, sep="\t", index=False, quoting=csv.QUOTE_NONE),
    )
    sampler = plugins.candidate_samplers.get(config["candidate_sampler"])
    sequences = user_sequences(inter)
    for offset, split in enumerate(SPLITS):
        rows = leave_one_out(sequences, split, int(config["history_len"]))
        sets = draw_candidate_sets(
            inter, rows, int(config["num_negatives"]), int(config["eval_seed"]) + offset, sampler
        )
        save_candidate_sets(folder / "candidates" / f"{split}.tsv", sets)
    return {
        "users": int(inter["user_id"].nunique()),
        "items": int(inter["item_id"].nunique()),
        "interactions": len(inter),
    }


def _read(folder: Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    atomic = pd.read_csv(
        folder / name / f"{name}.inter",
        sep="\t",
        dtype=str,
        quoting=csv.QUOTE_NONE,
        keep_default_na=False,
    )
    inter = pd.DataFrame(
        {
            "user_id": atomic["user_id:token"],
            "item_id": atomic["item_id:token"],
            "timestamp": atomic["time:float"].astype(float),
        }
    )
    return inter, read_items(folder)


def read_items(folder: Path) -> pd.DataFrame:
    """The data stage's ``items.tsv``: item_id, title (strings)."""
    return pd.read_csv(
        folder / "items.tsv", sep="\t", dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False
    )


#: Filtered interactions, items and the persisted candidate sets of every model's evaluation.
DATA = Stage(
    "data",
    reads=(
        *("dataset", "domain", "k_core", "user_sample_num", "user_sample_ratio", "data_seed"),
        *("eval_seed", "num_negatives", "candidate_sampler", "history_len"),
    ),
    uses=("data_path",),  # the domain's files are hashed by their fingerprint instead
    build=_build,
)


def prepare(config: RunConfig, plugins: Plugins, force: bool = False) -> PreparedData:
    """Run (or reuse) the data stage for ``config['dataset']``."""
    domain = resolve_domain(config, plugins)
    derived = {"source": domain_source(domain, config)}
    folder = run_stage(DATA, config, derived=derived, force=force, domain=domain, plugins=plugins)
    return PreparedData(config["dataset"], folder, int(config["history_len"]))
