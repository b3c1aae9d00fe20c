"""Random draws keyed by what they are for, not taken from a shared generator's stream.

A draw is a hash of its key (seed, user, sample, attempt...), so the same sample gets the same
draw whichever shard, worker or order computes it: a corpus built in 1 or 8 shards, on one
machine or a cluster, is the same. SplitMix64's finaliser mixes the keys (vectorised, uint64);
strings (user ids, domain names) enter through an 8-byte BLAKE2b digest, stable across Python
versions and processes (unlike ``hash``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import pandas as pd

_U64 = np.uint64


def splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's output function: every input bit flips about half the output bits."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as the algorithm wants
        z = np.asarray(values, dtype=_U64) + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def combine(*parts) -> np.ndarray:
    """One key from several (arrays broadcast; negative integers wrap to uint64)."""
    key = np.zeros((), dtype=_U64)
    for part in parts:
        key = splitmix64(key ^ np.asarray(part).astype(_U64))
    return key


def string_keys(values: Iterable[str] | np.ndarray) -> np.ndarray:
    """A stable 64-bit key per string (each distinct string hashed once)."""
    codes, uniques = pd.factorize(np.asarray(values, dtype=object))
    digests = [
        int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little")
        for v in uniques
    ]
    return np.asarray(digests, dtype=_U64)[codes] if len(codes) else np.zeros(0, _U64)


def below(keys: np.ndarray, n) -> np.ndarray:
    """An integer in ``[0, n)`` per key, uniform up to 2**-32 (the top 32 bits, scaled)."""
    n = np.asarray(n).astype(_U64)
    return ((np.asarray(keys, dtype=_U64) >> _U64(32)) * n >> _U64(32)).astype(np.int64)


def share(keys: np.ndarray, parts: int) -> np.ndarray:
    """Which of ``parts`` equal ranges of the key space each key falls in (keeps key order)."""
    return below(keys, parts)
