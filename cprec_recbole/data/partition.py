"""The CPT domains' interactions split by user into shard files, streamed chunk by chunk.

Each domain is read once, in chunks (:meth:`AtomicFileDomain.load_chunks`; a plugin domain
without it loads whole), and each chunk's rows go to the shard their user's key falls in: shard
``s`` of ``S`` holds the users whose key lies in the ``s``-th ``S``-th of the key space, so the
shards in order hold the users in key order. Items get their global codes once every domain has
been read (a domain's items with interactions, by id; domain after domain), so no step holds
more than a chunk, a shard or the item table.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cprec_recbole.data.keyed_random import share, string_keys
from cprec_recbole.errors import DataError

SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("user_key", pa.uint64()),
        ("domain", pa.int16()),
        ("item", pa.int32()),  # the item's index in its domain's titled items, by id
        ("timestamp", pa.float64()),
        ("row", pa.int64()),  # order within the domain as loaded
    ]
)


def domain_chunks(domain, config) -> tuple[pd.DataFrame, Iterator[pd.DataFrame]]:
    """A domain's items and its interactions in chunks (one chunk if it can only ``load``)."""
    if hasattr(domain, "load_chunks"):
        return domain.load_chunks(config)
    inter, items = domain.load(config)
    return items, iter([inter])


@dataclass
class Partition:
    """The shard files of a partitioned corpus input, and the item table they refer to."""

    folder: Path
    items: pd.DataFrame  # code, domain, item_id, title: the items with interactions
    interactions: list[int]  # per domain
    codes: np.ndarray  # item code of each domain's titled item (-1: never interacted with)
    starts: np.ndarray  # first entry of each domain in ``codes``

    def read(self, shard: int) -> pa.Table:
        """A shard's interactions, the ``item`` column as global item codes."""
        table = pq.read_table(_input(self.folder, shard))
        domain = table.column("domain").to_numpy()
        item = self.codes[self.starts[domain] + table.column("item").to_numpy()]
        column = table.schema.get_field_index("item")
        return table.set_column(column, "item", pa.array(item, pa.int32()))


def _input(folder: Path, shard: int) -> Path:
    return folder / f"input-{shard:05d}.parquet"


def _write_chunk(
    writers: list, chunk: pd.DataFrame, code: np.ndarray, domain: int, row: int
) -> None:
    keys = string_keys(chunk["user_id"].to_numpy())
    shard = share(keys, len(writers))
    table = pa.table(
        {
            "user_id": pa.array(chunk["user_id"].to_numpy(), pa.string()),
            "user_key": pa.array(keys, pa.uint64()),
            "domain": pa.array(np.full(len(chunk), domain, np.int16)),
            "item": pa.array(code, pa.int32()),
            "timestamp": pa.array(chunk["timestamp"].to_numpy(np.float64)),
            "row": pa.array(np.arange(row, row + len(chunk), dtype=np.int64)),
        },
        schema=SCHEMA,
    )
    order = np.argsort(shard, kind="stable")
    bounds = np.searchsorted(shard[order], np.arange(len(writers) + 1))
    for index, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        if hi > lo:
            writers[index].write_table(table.take(order[lo:hi]))


def _titled(chunk: pd.DataFrame, name: str, index: pd.Index) -> np.ndarray:
    code = index.get_indexer(chunk["item_id"])
    if (code < 0).any():
        raise DataError(
            f"CPT domain {name}: item {chunk['item_id'].to_numpy()[code < 0][0]!r} has "
            "interactions but no title; a domain's load() must drop such interactions"
        )
    return code


def partition(
    folder: Path, sources: Iterable[tuple[pd.DataFrame, Iterator[pd.DataFrame]]], names, shards
) -> Partition:
    """Stream every domain's (items, interaction chunks) into ``shards`` files under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    writers = [pq.ParquetWriter(_input(folder, s), SCHEMA) for s in range(shards)]
    tables, seen, counts = [], [], []
    try:
        for domain, (items, chunks) in enumerate(sources):
            items = items.drop_duplicates("item_id").sort_values("item_id", ignore_index=True)
            index, used, rows = pd.Index(items["item_id"]), np.zeros(len(items), bool), 0
            for chunk in chunks:
                code = _titled(chunk, names[domain], index)
                used[code] = True
                _write_chunk(writers, chunk, code, domain, rows)
                rows += len(chunk)
            tables.append(items)
            seen.append(used)
            counts.append(rows)
    finally:
        for writer in writers:
            writer.close()
    return _coded(folder, tables, seen, counts)


def _coded(folder: Path, tables: list, seen: list, counts: list) -> Partition:
    """Global item codes: each domain's items with interactions, by id, domain after domain."""
    used = np.concatenate(seen) if seen else np.zeros(0, bool)
    codes = np.where(used, np.cumsum(used) - 1, -1)
    kept = [
        pd.DataFrame(
            {
                "domain": np.full(int(mask.sum()), d, dtype=np.int16),
                "item_id": t["item_id"].to_numpy()[mask],
                "title": t["title"].to_numpy()[mask],
            }
        )
        for d, (t, mask) in enumerate(zip(tables, seen))
    ]
    items = pd.concat(kept, ignore_index=True)
    items.insert(0, "code", np.arange(len(items), dtype=np.int32))
    starts = np.cumsum([0] + [len(m) for m in seen])[:-1]
    return Partition(folder, items, counts, codes, starts)
