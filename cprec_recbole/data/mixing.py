"""Which all-domain mixed windows enter the CPT corpus: our reading of the paper's G1 and G2.

Each rule takes ``history_domains [n, window]`` (domain ids, -1 for padding) and
``target_domain [n]`` and returns a bool mask over the windows, vectorised.
"""

from __future__ import annotations

import numpy as np


def g1_cross_domain_history(history_domains: np.ndarray, target_domain: np.ndarray) -> np.ndarray:
    """G1: the history window holds items from at least two distinct domains."""
    present = history_domains >= 0
    # a history of padding only gives high -1 < low: False (the ids' own dtype's maximum: numpy 2
    # casts a Python int to the array's dtype, and int64's maximum overflows an int16 array)
    none = np.iinfo(history_domains.dtype).max
    high = np.where(present, history_domains, -1).max(axis=1, initial=-1)
    low = np.where(present, history_domains, none).min(axis=1, initial=none)
    return high > low


def g2_target_domain_in_history(
    history_domains: np.ndarray, target_domain: np.ndarray
) -> np.ndarray:
    """G2: the target's domain occurs in the history window (padding never matches)."""
    return (history_domains == np.asarray(target_domain)[:, None]).any(axis=1)


def g1_and_g2(history_domains: np.ndarray, target_domain: np.ndarray) -> np.ndarray:
    """Both guidelines: a cross-domain history that also prepares the target's domain."""
    return g1_cross_domain_history(history_domains, target_domain) & g2_target_domain_in_history(
        history_domains, target_domain
    )


def keep_all(history_domains: np.ndarray, target_domain: np.ndarray) -> np.ndarray:
    """Every mixed window (the no-guideline ablation)."""
    return np.ones(len(history_domains), dtype=bool)


MIXING_RULES = {
    "g1": g1_cross_domain_history,
    "g2": g2_target_domain_in_history,
    "g1_g2": g1_and_g2,
    "all": keep_all,
}
