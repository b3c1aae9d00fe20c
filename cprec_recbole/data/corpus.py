"""The CPT behaviour corpus (paper section 4.3): domain-specific and all-domain mixed samples.

Every CPT domain contributes its users' sliding windows (domain-specific samples); each user's
interactions from all CPT domains, merged chronologically, give the mixed samples, kept where the
mixing rule holds. Each sample gets a candidate set drawn from the target's domain. Items get
global integer codes (domain by domain); users keep their raw ids, which is what lets one user's
domains meet.

A user's samples need only that user's interactions, so the corpus is built in shards by user
key (:mod:`partition` streams the input into them, :mod:`corpus_shard` builds one, here or as a
Ray task), each written to its own parquet file: memory is bounded by a shard, whatever the data
size. Draws are keyed per sample and rows ordered by user key, so the corpus is the same for any
``corpus_shards``; :class:`Corpus` reads it back lazily, shard by shard or row group by row group.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cprec_recbole.data.corpus_shard import DOMAIN_SPECIFIC, MIXED, ShardSpec, build_shard
from cprec_recbole.data.partition import domain_chunks, partition
from cprec_recbole.data.prepare import domain_source, resolve_domain
from cprec_recbole.data.windows import PAD
from cprec_recbole.errors import ConfigError, DataError
from cprec_recbole.io import write_atomic, write_json
from cprec_recbole.plugins import Plugins
from cprec_recbole.run_config import RunConfig, tracked
from cprec_recbole.stages import Stage, run_stage
from cprec_recbole.tasks import run_tasks

if TYPE_CHECKING:  # the batcher imports torch; data/ must not at import time
    from cprec_recbole.llm.batching import LLMSample

CORPUS_KEYS = (
    "cpt_domains",
    "history_len",
    "min_history",
    "cpt_stride",
    "num_negatives",
    "mixing_rule",
    "cpt_seed",
)
INDEX = "corpus.json"
ITEMS = "items.parquet"
#: Rows per parquet row group: what reading one sample back decodes.
ROW_GROUP = 1024


# ------------------------------------------------------------------ configuration
def resolve_cpt_domains(config: dict, plugins: Plugins) -> list[str]:
    """The CPT domains: ``cpt_domains``, or (when null) every dataset under ``data_path``
    except the downstream one, which CPT must never see."""
    downstream = config.get("domain") or config.get("dataset")
    chosen = config.get("cpt_domains")
    if chosen is None:
        root = Path(config["data_path"])
        found = [p.name for p in root.iterdir()] if root.is_dir() else []
        names = sorted(n for n in found if (root / n / f"{n}.inter").is_file() and n != downstream)
        if not names:
            raise ConfigError(
                f"cpt_domains is null, so the CPT domains are the datasets under "
                f"data_path={root} other than the downstream {downstream!r}; found none. Put "
                f"<Name>/<Name>.inter|.item folders there or set cpt_domains: [Name, ...]."
            )
        return names
    names = [str(n) for n in ([chosen] if isinstance(chosen, str) else chosen)]
    if not names:
        raise ConfigError(
            "cpt_domains is an empty list; name the CPT domains (e.g. [Electronic, Clothing]) "
            "or set it to null for every dataset under data_path except the downstream one"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"cpt_domains {names} names a domain twice")
    if downstream in names:
        raise ConfigError(
            f"cpt_domains {names} contains the downstream domain {downstream!r}: the CPT corpus "
            f"must not hold the data the model is evaluated on. Remove it from cpt_domains."
        )
    for name in names:  # an unknown name fails here, with suggestions, before any loading
        resolve_domain(_domain_config(config, name), plugins)
    return names


def _domain_config(config: RunConfig, name: str) -> RunConfig:
    return tracked(config).updated(domain=name, dataset=name)


def _settings(config: dict) -> dict[str, Any]:
    missing = [k for k in CORPUS_KEYS if k not in config]
    if missing:
        raise ConfigError(
            f"the CPT corpus needs config key(s) {', '.join(missing)}; set them in a config "
            f"file (properties/cpt.yaml holds the defaults) or pass --key=value"
        )
    out = {k: config[k] for k in CORPUS_KEYS}
    for key, low in (
        ("history_len", 1),
        ("min_history", 0),
        ("cpt_stride", 1),
        ("num_negatives", 1),
    ):
        if not isinstance(out[key], int) or out[key] < low:
            raise ConfigError(f"{key} must be an integer >= {low}, got {out[key]!r}")
    return out


def _shards(config: dict) -> int:
    """``corpus_shards`` (absent or null: 1): how many user-key shards the build goes through."""
    shards = config.get("corpus_shards")
    shards = 1 if shards is None else shards
    if not isinstance(shards, int) or shards < 1:
        raise ConfigError(f"corpus_shards must be an integer >= 1, got {shards!r}")
    return shards


# ------------------------------------------------------------------ the stage
def _spec(settings: dict, rule, names: list[str], items: pd.DataFrame) -> ShardSpec:
    domain = items["domain"].to_numpy()
    return ShardSpec(
        history_len=int(settings["history_len"]),
        min_history=int(settings["min_history"]),
        stride=int(settings["cpt_stride"]),
        num_negatives=int(settings["num_negatives"]),
        seed=int(settings["cpt_seed"]),
        rule=rule,
        domains=tuple(names),
        item_domain=domain,
        item_words=items["title"].str.split().str.len().to_numpy(dtype=np.int64),
        offsets=np.searchsorted(domain, np.arange(len(names) + 1)),
    )


def shard_file(shard: int, shards: int) -> str:
    return f"samples/shard-{shard:05d}-of-{shards:05d}.parquet"


def _write_parquet(path: Path, table: pa.Table, **options) -> Path:
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp, **options))


def _mean(total: int, count: int) -> float:
    return round(total / count, 1) if count else 0.0


def summarise(names: list[str], interactions: list[int], stats: list[dict]) -> dict[str, Any]:
    """The manifest's metrics from the shards' stats: how much each domain and the mixing
    contribute."""

    def total(key: str) -> np.ndarray:
        return np.sum([s[key] for s in stats], axis=0)

    def per_domain(values) -> dict[str, int]:
        return dict(zip(names, (int(v) for v in values), strict=True))

    rows, words = total("rows"), total("words")
    return {
        "domains": names,
        "interactions": per_domain(interactions),
        "domain_specific_samples": per_domain(total("domain_specific_samples")),
        "mixed_samples": int(rows[MIXED]),
        "mixed_samples_per_domain": per_domain(total("mixed_samples_per_domain")),
        "users": per_domain(total("users")),
        "mixed_users": int(total("mixed_users")),
        "title_words": {
            "domain_specific_mean": _mean(int(words[0]), int(rows[0])),
            "mixed_mean": _mean(int(words[1]), int(rows[1])),
            "total": int(words.sum()),
        },
    }


def build_corpus(
    folder: Path, config: RunConfig, plugins: Plugins, domains: dict
) -> dict[str, Any]:
    """Stream the domains into user-key shards, build each shard's samples (here, or as Ray
    tasks with ``ray_address``), write one parquet file per shard, the items and the index."""
    start = time.perf_counter()
    settings, shards, names = _settings(config), _shards(config), list(domains)
    rule = plugins.mixing_rules.get(settings["mixing_rule"])
    sources = (domain_chunks(domains[n], _domain_config(config, n)) for n in names)
    scratch = folder / ".partition"
    stats: list[dict] = [{}] * shards
    try:
        part = partition(scratch, sources, names, shards)
        spec = _spec(settings, rule, names, part.items)
        inputs = (part.read(s) for s in range(shards))
        for shard, (table, shard_stats) in run_tasks(
            build_shard, inputs, spec, config.get("ray_address")
        ):
            _write_parquet(folder / shard_file(shard, shards), table, row_group_size=ROW_GROUP)
            stats[shard] = shard_stats
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _write_parquet(folder / ITEMS, pa.Table.from_pandas(part.items, preserve_index=False))
    index = [{"file": shard_file(s, shards), "rows": stats[s]["rows"]} for s in range(shards)]
    write_json(folder / INDEX, {"domains": names, "shards": index})
    summary = summarise(names, part.interactions, stats)
    return {**summary, "shards": shards, "build_seconds": round(time.perf_counter() - start, 2)}


#: The behaviour corpus of the CPT domains (``samples/shard-*.parquet``, ``items.parquet``,
#: ``corpus.json``). The shard count and where shards run change nothing in it: ``uses``.
CORPUS = Stage(
    "corpus",
    reads=CORPUS_KEYS,
    uses=("data_path", "corpus_shards", "ray_address"),
    build=build_corpus,
    version=2,
)


def corpus_domains(config: RunConfig, plugins: Plugins) -> tuple[dict, dict[str, Any]]:
    """The CPT domains by name and what the corpus hash derives from them (names, files)."""
    settings = _settings(config)
    plugins.mixing_rules.get(settings["mixing_rule"])  # an unknown rule fails before loading
    _shards(config)
    names = resolve_cpt_domains(config, plugins)
    domains = {n: resolve_domain(_domain_config(config, n), plugins) for n in names}
    sources = {n: domain_source(d, _domain_config(config, n)) for n, d in domains.items()}
    return domains, {"domains": names, "sources": sources}


def corpus_stage(config: RunConfig, plugins: Plugins, force: bool = False) -> Path:
    """Run (or reuse) the corpus stage; see :data:`CORPUS` for what its folder holds."""
    domains, derived = corpus_domains(config, plugins)
    return run_stage(CORPUS, config, derived=derived, force=force, plugins=plugins, domains=domains)


# ------------------------------------------------------------------ reading it back
def _matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size list column as a 2-d array (no per-row Python)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return array.flatten().to_numpy().reshape(len(array), array.type.list_size)


@dataclass
class Rows:
    """Corpus rows as arrays (item codes; histories -1 padded on the left)."""

    phase: np.ndarray  # [n] int8: 0 domain-specific, 1 mixed
    domain: np.ndarray  # [n] int16: the target's domain index
    user: np.ndarray  # [n] raw user ids
    history: np.ndarray  # [n, history_len] int32
    candidates: np.ndarray  # [n, num_negatives + 1] int32
    target: np.ndarray  # [n] int32

    def __len__(self) -> int:
        return len(self.target)

    @staticmethod
    def from_table(table: pa.Table) -> Rows:
        return Rows(
            phase=table.column("phase").to_numpy(),
            domain=table.column("domain").to_numpy(),
            user=table.column("user").to_numpy(zero_copy_only=False),
            history=_matrix(table.column("history")),
            candidates=_matrix(table.column("candidates")),
            target=table.column("target").to_numpy(),
        )

    def take(self, index: np.ndarray) -> Rows:
        return Rows(*(getattr(self, f.name)[index] for f in fields(Rows)))

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        return Rows(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Rows)))


class Corpus:
    """A corpus stage folder, read lazily: the sample count and phases up front, rows by shard
    (:meth:`chunks`) or by index (:meth:`rows`, decoding only their row groups).

    Row ``i`` is global: every shard's domain-specific rows, shard after shard, then every
    shard's mixed rows; shards hold users in key order, so the order is the same for any shard
    count.
    """

    def __init__(self, folder: str | Path, cached_groups: int = 64):
        self.folder = Path(folder)
        index = json.loads((self.folder / INDEX).read_text())
        self.domains: list[str] = index["domains"]
        self.files = [self.folder / s["file"] for s in index["shards"]]
        for path in self.files:
            if not path.is_file():
                raise DataError(
                    f"{path}: a shard of the corpus is missing ({len(self.files)} listed in "
                    f"{self.folder / INDEX}); rebuild the corpus with --force=corpus"
                )
        self.counts = np.array([s["rows"] for s in index["shards"]], dtype=np.int64)  # [S, 2]
        self.starts = np.vstack([np.zeros((1, 2), np.int64), np.cumsum(self.counts, axis=0)])
        items = pq.read_table(self.folder / ITEMS)
        self.item_domain = items.column("domain").to_numpy()
        self.item_ids = items.column("item_id").to_numpy(zero_copy_only=False)
        codes = items.column("code").to_numpy().tolist()
        self.titles = dict(zip(codes, items.column("title").to_pylist(), strict=True))
        self.phase = np.repeat(
            np.array([DOMAIN_SPECIFIC, MIXED], np.int8), self.starts[-1].tolist()
        )
        self._open: dict[int, pq.ParquetFile] = {}
        self._groups: OrderedDict[tuple[int, int], Rows] = OrderedDict()
        self._cached = cached_groups

    def __len__(self) -> int:
        return len(self.phase)

    def phase_indices(self, phase: int) -> np.ndarray:
        """Row indices of one phase, in order."""
        return np.flatnonzero(self.phase == phase)

    def _global(self, shard: int) -> np.ndarray:
        """The global indices of a shard's rows, in the shard's order."""
        ds, mixed = self.counts[shard]
        first = self.starts[shard]
        return np.concatenate(
            [np.arange(first[0], first[0] + ds), self.starts[-1, 0] + first[1] + np.arange(mixed)]
        )

    def chunks(self) -> Iterator[tuple[np.ndarray, Rows]]:
        """(global indices, rows) of each shard in turn: a whole pass holding one shard."""
        for shard, path in enumerate(self.files):
            yield self._global(shard), Rows.from_table(pq.read_table(path))

    def _locate(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shard and row within it of each global index."""
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"corpus rows are 0..{len(self) - 1}; asked for {index.tolist()}")
        phase = (index >= self.starts[-1, 0]).astype(np.int64)
        within = index - phase * self.starts[-1, 0]
        shard = (
            np.where(
                phase == 0,
                np.searchsorted(self.starts[:, 0], within, side="right"),
                np.searchsorted(self.starts[:, 1], within, side="right"),
            )
            - 1
        )
        return shard, within - self.starts[shard, phase] + phase * self.counts[shard, 0]

    def _file(self, shard: int) -> pq.ParquetFile:
        if shard not in self._open:
            self._open[shard] = pq.ParquetFile(self.files[shard])
        return self._open[shard]

    def _group_starts(self, shard: int) -> np.ndarray:
        """First row of each row group of a shard, then its row count."""
        meta = self._file(shard).metadata
        return np.cumsum([0, *(meta.row_group(g).num_rows for g in range(meta.num_row_groups))])

    def _group(self, shard: int, group: int) -> Rows:
        key = (shard, group)
        if key not in self._groups:
            table = self._file(shard).read_row_group(group)
            self._groups[key] = Rows.from_table(table)
            if len(self._groups) > self._cached:
                self._groups.popitem(last=False)
        self._groups.move_to_end(key)
        return self._groups[key]

    def rows(self, indices: Sequence[int] | np.ndarray) -> Rows:
        """The rows at global ``indices``, in that order (decoding only their row groups)."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        shard, local = self._locate(index)
        parts, where = [], []
        for s in np.unique(shard).tolist():
            at = np.flatnonzero(shard == s)
            starts = self._group_starts(s)
            group = np.searchsorted(starts, local[at], side="right") - 1
            for g in np.unique(group).tolist():
                mine = group == g
                parts.append(self._group(s, g).take(local[at][mine] - starts[g]))
                where.append(at[mine])
        if not parts:
            return Rows.from_table(pq.ParquetFile(self.files[0]).schema_arrow.empty_table())
        return Rows.concat(parts).take(np.argsort(np.concatenate(where), kind="stable"))

    def samples(self, indices: Sequence[int] | np.ndarray) -> list[LLMSample]:
        """``LLMSample``s whose item ids are the integer codes (keys of ``titles``)."""
        from cprec_recbole.llm.batching import LLMSample

        rows = self.rows(indices)
        return [
            LLMSample(
                user_id=str(u),
                history=[c for c in h if c != PAD],
                candidates=cands,
                target=t,
            )
            for u, h, cands, t in zip(
                rows.user.tolist(),
                rows.history.tolist(),
                rows.candidates.tolist(),
                rows.target.tolist(),
                strict=True,
            )
        ]


def load_corpus(folder: str | Path) -> Corpus:
    """Open a corpus stage folder (lazily: see :class:`Corpus`)."""
    return Corpus(folder)
