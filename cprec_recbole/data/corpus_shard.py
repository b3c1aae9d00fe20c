"""One shard of the CPT corpus: the samples of a set of users, from their interactions alone.

A user's windows (domain-specific and mixed) and negatives need nothing but that user's
interactions and the item table, so users split into shards that build independently, here or
as Ray tasks. Every random draw is keyed by (seed, user, sample) (:mod:`keyed_random`) and rows
come out sorted by user key, so the shards laid end to end are one corpus, whatever their number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from cprec_recbole.data.candidates import unique_per_row
from cprec_recbole.data.keyed_random import below, combine, string_keys
from cprec_recbole.data.windows import PAD, window_matrix
from cprec_recbole.errors import DataError

DOMAIN_SPECIFIC, MIXED = 0, 1
#: The key of the draw that places the target among its negatives (no draw counter reaches it).
_SLOT = -1


@dataclass(frozen=True)
class ShardSpec:
    """What every shard shares: the corpus settings, the mixing rule and the item table."""

    history_len: int
    min_history: int
    stride: int
    num_negatives: int
    seed: int
    rule: Callable[[np.ndarray, np.ndarray], np.ndarray]
    domains: tuple[str, ...]
    item_domain: np.ndarray  # [n_items] int16, by item code
    item_words: np.ndarray  # [n_items] int64 words of each title
    offsets: np.ndarray  # [n_domains + 1] first item code of each domain, then n_items

    @property
    def domain_keys(self) -> np.ndarray:
        return string_keys(list(self.domains))


@dataclass
class Windows:
    """Samples of one kind as arrays: user (code into the shard's users), history item codes
    ([n, history_len], -1 padded on the left), target, and the target's position in its
    sequence (with the user and the sequence, what keys the sample's draws)."""

    user: np.ndarray
    history: np.ndarray
    target: np.ndarray
    position: np.ndarray

    def select(self, mask: np.ndarray) -> Windows:
        return Windows(self.user[mask], self.history[mask], self.target[mask], self.position[mask])


@dataclass
class ShardInteractions:
    """A shard's interactions; user codes follow the users' keys (ties: their ids)."""

    users: np.ndarray  # raw ids, by code
    user_keys: np.ndarray  # uint64 key of each user, by code (ascending)
    user: np.ndarray  # [m] int64 code
    domain: np.ndarray  # [m] int16
    item: np.ndarray  # [m] int32 item code
    timestamp: np.ndarray  # [m] float64
    row: np.ndarray  # [m] int64 order within the domain as loaded (ties keep it)

    @staticmethod
    def from_table(table: pa.Table) -> ShardInteractions:
        """From the partition's columns: user_id, user_key, domain, item, timestamp, row."""
        ids = table.column("user_id").to_numpy(zero_copy_only=False)
        codes, uniques = pd.factorize(ids, sort=True)
        _, first = np.unique(codes, return_index=True)
        keys = table.column("user_key").to_numpy()[first]
        order = np.lexsort((np.arange(len(uniques)), keys))
        rank = np.empty(len(uniques), dtype=np.int64)
        rank[order] = np.arange(len(uniques))
        return ShardInteractions(
            users=np.asarray(uniques, dtype=object)[order],
            user_keys=keys[order],
            user=rank[codes],
            domain=table.column("domain").to_numpy(),
            item=table.column("item").to_numpy(),
            timestamp=table.column("timestamp").to_numpy(),
            row=table.column("row").to_numpy(),
        )


def _runs(keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of each run of equal consecutive key tuples."""
    n = len(keys[0])
    change = np.zeros(n, dtype=bool)
    change[:1] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    starts = np.flatnonzero(change)
    return starts, np.diff(np.append(starts, n))


def _windows(
    data: ShardInteractions, order: np.ndarray, run_keys: list[np.ndarray], spec: ShardSpec
) -> Windows:
    starts, lengths = _runs([k[order] for k in run_keys])
    sequence, history_at, target_at = window_matrix(
        lengths, np.arange(len(order)), spec.history_len, spec.min_history, stride=spec.stride
    )
    items = data.item[order]
    history = np.where(history_at >= 0, items[np.maximum(history_at, 0)], PAD).astype(np.int32)
    return Windows(
        data.user[order][starts][sequence],
        history,
        items[target_at],
        target_at - starts[sequence],
    )


def domain_specific_samples(data: ShardInteractions, spec: ShardSpec) -> Windows:
    """Each user's windows within each domain; users in key order, then domain by domain."""
    # Stable: equal timestamps keep the order the domain loaded them in.
    order = np.lexsort((data.row, data.timestamp, data.domain, data.user))
    return _windows(data, order, [data.user, data.domain], spec)


def mixed_order(data: ShardInteractions) -> np.ndarray:
    """Each user's interactions over all domains, by time; ties keep domain order, then the
    order within the domain."""
    return np.lexsort((data.row, data.domain, data.timestamp, data.user))


def mixed_samples(data: ShardInteractions, spec: ShardSpec) -> Windows:
    """Windows over each user's merged all-domain sequence, kept where the mixing rule holds."""
    windows = _windows(data, mixed_order(data), [data.user], spec)
    domains = np.where(windows.history >= 0, spec.item_domain[windows.history], PAD)
    keep = np.asarray(spec.rule(domains, spec.item_domain[windows.target]), dtype=bool)
    return windows.select(keep)


def sample_keys(
    data: ShardInteractions, windows: Windows, phase: int, spec: ShardSpec
) -> np.ndarray:
    """The key of each sample's draws: seed, user, kind, sequence (the target's domain for a
    domain-specific sample, all domains for a mixed one) and the target's position in it."""
    sequence = spec.domain_keys[spec.item_domain[windows.target]] if phase == DOMAIN_SPECIFIC else 0
    return combine(spec.seed, data.user_keys[windows.user], phase, sequence, windows.position)


def keyed_negatives(
    keys: np.ndarray, user: np.ndarray, seen: np.ndarray, n_items: int, count: int
) -> np.ndarray:
    """``[n, count]`` distinct items in ``[0, n_items)`` that the user never interacted with
    (``seen``: sorted ``user * n_items + item``), drawn by rejection from each sample's ``keys``
    alone: attempt ``a`` draws ``w = 2 * count + 8`` items keyed (key, a * w + j), j < w."""
    width = 2 * count + 8
    out = np.full((len(keys), count), -1, dtype=np.int64)
    todo, attempt = np.arange(len(keys)), 0
    while len(todo):
        counters = attempt * width + np.arange(width)
        draws = below(combine(keys[todo, None], counters[None, :]), n_items)
        pairs = user[todo, None].astype(np.int64) * n_items + draws
        at = np.minimum(np.searchsorted(seen, pairs), max(len(seen) - 1, 0))
        hit = seen[at] == pairs if len(seen) else np.zeros(pairs.shape, dtype=bool)
        ok = ~hit & unique_per_row(draws)
        enough = ok.sum(axis=1) >= count
        picked = np.argsort(~ok[enough], axis=1, kind="stable")[:, :count]
        out[todo[enough]] = np.take_along_axis(draws[enough], picked, axis=1)
        todo, attempt = todo[~enough], attempt + 1
    return out


def draw_candidates(
    data: ShardInteractions, windows: Windows, keys: np.ndarray, spec: ShardSpec
) -> np.ndarray:
    """``[n, num_negatives + 1]``: the target among negatives from the target's domain that the
    user never interacted with there, the target at a keyed random position."""
    count = spec.num_negatives
    target_domain = spec.item_domain[windows.target]
    negatives = np.empty((len(keys), count), dtype=np.int64)
    for domain in np.unique(target_domain):
        rows = np.flatnonzero(target_domain == domain)
        low, n_items = int(spec.offsets[domain]), int(np.diff(spec.offsets)[domain])
        inside = data.domain == domain
        seen = np.unique(data.user[inside] * n_items + (data.item[inside] - low))
        per_user = np.bincount(seen // n_items, minlength=len(data.users))
        short = per_user[windows.user[rows]] > n_items - count
        if short.any():
            user = int(windows.user[rows][short][0])
            raise DataError(
                f"CPT domain {spec.domains[domain]!r}: user {data.users[user]!r} has interacted "
                f"with {per_user[user]} of {n_items} items, leaving fewer than {count} negatives "
                "to draw; lower num_negatives or leave the domain out of cpt_domains"
            )
        drawn = keyed_negatives(keys[rows], windows.user[rows], seen, n_items, count)
        negatives[rows] = drawn + low
    slot = below(combine(keys, _SLOT), count + 1)
    place = np.arange(count + 1)[None, :] == slot[:, None]
    out = np.empty(place.shape, dtype=np.int32)
    out[place] = windows.target
    out[~place] = negatives.ravel()
    return out


def samples_table(
    data: ShardInteractions,
    phase: np.ndarray,
    windows: Windows,
    candidates: np.ndarray,
    spec: ShardSpec,
) -> pa.Table:
    """One row per sample, the fixed-width arrays as fixed-size lists."""
    return pa.table(
        {
            "phase": pa.array(phase, pa.int8()),
            "domain": pa.array(spec.item_domain[windows.target], pa.int16()),
            "user": pa.array(data.users[windows.user], pa.string()),
            "history": pa.FixedSizeListArray.from_arrays(
                pa.array(windows.history.ravel(), pa.int32()), spec.history_len
            ),
            "candidates": pa.FixedSizeListArray.from_arrays(
                pa.array(candidates.ravel(), pa.int32()), spec.num_negatives + 1
            ),
            "target": pa.array(windows.target, pa.int32()),
        }
    )


def shard_stats(
    phase: np.ndarray, windows: Windows, candidates: np.ndarray, spec: ShardSpec
) -> dict[str, Any]:
    """The shard's part of the manifest's metrics; every count adds up over shards (a user
    is in one shard only)."""
    n = len(spec.domains)
    target_domain = spec.item_domain[windows.target].astype(np.int64)
    words = spec.item_words[candidates].sum(axis=1)
    words += np.where(windows.history >= 0, spec.item_words[windows.history], 0).sum(axis=1)
    specific, mixed = phase == DOMAIN_SPECIFIC, phase == MIXED
    pairs = np.unique(windows.user[specific] * n + target_domain[specific])
    return {
        "rows": [int(specific.sum()), int(mixed.sum())],
        "domain_specific_samples": np.bincount(target_domain[specific], minlength=n).tolist(),
        "mixed_samples_per_domain": np.bincount(target_domain[mixed], minlength=n).tolist(),
        "users": np.bincount(pairs % n, minlength=n).tolist(),
        "mixed_users": len(np.unique(windows.user[mixed])),
        "words": [int(words[specific].sum()), int(words[mixed].sum())],
    }


def build_shard(interactions: pa.Table, spec: ShardSpec) -> tuple[pa.Table, dict[str, Any]]:
    """A shard's samples (domain-specific, then mixed; each in user-key order) and its stats."""
    data = ShardInteractions.from_table(interactions)
    parts = [domain_specific_samples(data, spec), mixed_samples(data, spec)]
    keys = [sample_keys(data, w, p, spec) for p, w in zip((DOMAIN_SPECIFIC, MIXED), parts)]
    windows = Windows(
        *(np.concatenate([getattr(w, f.name) for w in parts]) for f in fields(Windows))
    )
    phase = np.repeat(np.array([DOMAIN_SPECIFIC, MIXED], np.int8), [len(w.user) for w in parts])
    candidates = draw_candidates(data, windows, np.concatenate(keys), spec)
    table = samples_table(data, phase, windows, candidates, spec)
    return table, shard_stats(phase, windows, candidates, spec)
