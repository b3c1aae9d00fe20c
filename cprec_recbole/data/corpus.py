"""The CPT behaviour corpus (paper section 4.3): domain-specific and all-domain mixed samples.

Every CPT domain contributes its users' sliding windows (domain-specific samples); each user's
interactions from all CPT domains, merged chronologically, give the mixed samples, kept where the
mixing rule holds. Each sample gets a candidate set drawn from the target's domain. Items get
global integer codes (domain by domain); users keep their raw ids, which is what lets one user's
domains meet. Everything is built on whole arrays: the corpus has hundreds of thousands of rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cprec_recbole.data.candidates import uniform_negatives
from cprec_recbole.data.prepare import domain_source, resolve_domain
from cprec_recbole.data.windows import PAD, window_matrix
from cprec_recbole.errors import ConfigError, DataError
from cprec_recbole.io import write_atomic
from cprec_recbole.plugins import Plugins
from cprec_recbole.run_config import RunConfig, tracked
from cprec_recbole.stages import Stage, run_stage

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
SAMPLES = "samples.parquet"
ITEMS = "items.parquet"
DOMAIN_SPECIFIC, MIXED = 0, 1
_DOMAINS_META = b"cprec.domains"


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


# ------------------------------------------------------------------ interactions
@dataclass
class Interactions:
    """All CPT domains' interactions as integer codes, concatenated in domain order."""

    user: np.ndarray  # [m] int64 code into ``users``
    item: np.ndarray  # [m] int32 global item code
    domain: np.ndarray  # [m] int16
    timestamp: np.ndarray  # [m] float64
    users: np.ndarray  # raw user ids, sorted
    items: pd.DataFrame  # code, domain, item_id, title

    @property
    def item_domain(self) -> np.ndarray:
        return self.items["domain"].to_numpy()


def encode_domains(
    frames: list[tuple[pd.DataFrame, pd.DataFrame]], names: list[str] | None = None
) -> Interactions:
    """Codes for items per domain (equal ids in two domains stay two items); users by raw id."""
    items, codes, offset = [], [], 0
    for index, (inter, table) in enumerate(frames):
        table = table[table["item_id"].isin(inter["item_id"])].sort_values("item_id")
        code = pd.Index(table["item_id"]).get_indexer(inter["item_id"])
        if (code < 0).any():
            name = names[index] if names else f"#{index}"
            raise DataError(
                f"CPT domain {name}: item {inter['item_id'].to_numpy()[code < 0][0]!r} has "
                "interactions but no title; a domain's load() must drop such interactions"
            )
        codes.append(code + offset)
        items.append(
            pd.DataFrame(
                {
                    "code": np.arange(offset, offset + len(table), dtype=np.int32),
                    "domain": np.full(len(table), index, dtype=np.int16),
                    "item_id": table["item_id"].to_numpy(),
                    "title": table["title"].to_numpy(),
                }
            )
        )
        offset += len(table)
    user_codes, users = pd.factorize(
        np.concatenate([inter["user_id"].to_numpy(dtype=object) for inter, _ in frames]),
        sort=True,
    )
    return Interactions(
        user=user_codes.astype(np.int64),
        item=np.concatenate(codes).astype(np.int32),
        domain=np.repeat(np.arange(len(frames), dtype=np.int16), [len(f) for f, _ in frames]),
        timestamp=np.concatenate([f["timestamp"].to_numpy(dtype=np.float64) for f, _ in frames]),
        users=np.asarray(users, dtype=object),
        items=pd.concat(items, ignore_index=True),
    )


# ------------------------------------------------------------------ samples
@dataclass
class Windows:
    """Samples as arrays: user code, history item codes ([n, history_len], -1 padded), target."""

    user: np.ndarray
    history: np.ndarray
    target: np.ndarray

    def select(self, mask: np.ndarray) -> Windows:
        return Windows(self.user[mask], self.history[mask], self.target[mask])

    @staticmethod
    def concat(parts: list[Windows]) -> Windows:
        return Windows(
            np.concatenate([p.user for p in parts]),
            np.concatenate([p.history for p in parts]),
            np.concatenate([p.target for p in parts]),
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
    data: Interactions, order: np.ndarray, run_keys: list[np.ndarray], settings: dict
) -> Windows:
    starts, lengths = _runs([k[order] for k in run_keys])
    sequence, history, target = window_matrix(
        lengths,
        data.item[order],
        int(settings["history_len"]),
        int(settings["min_history"]),
        stride=int(settings["cpt_stride"]),
    )
    return Windows(data.user[order][starts][sequence], history, target)


def domain_specific_samples(data: Interactions, settings: dict) -> Windows:
    """Each user's windows within each domain, domain by domain."""
    # Stable: equal timestamps keep the order the domain loaded them in.
    order = np.lexsort((np.arange(len(data.item)), data.timestamp, data.user, data.domain))
    return _windows(data, order, [data.domain, data.user], settings)


def mixed_order(data: Interactions) -> np.ndarray:
    """Each user's interactions over all domains, by time; ties keep domain order, then the
    within-domain order (the concatenated row number encodes both)."""
    return np.lexsort((np.arange(len(data.item)), data.timestamp, data.user))


def mixed_samples(data: Interactions, settings: dict, rule) -> Windows:
    """Windows over each user's merged all-domain sequence, kept where ``rule`` holds."""
    windows = _windows(data, mixed_order(data), [data.user], settings)
    domains = np.where(windows.history >= 0, data.item_domain[windows.history], PAD)
    keep = np.asarray(rule(domains, data.item_domain[windows.target]), dtype=bool)
    return windows.select(keep)


def draw_candidates(
    data: Interactions,
    names: list[str],
    user: np.ndarray,
    target: np.ndarray,
    num_negatives: int,
    seed: int,
) -> np.ndarray:
    """``[n, num_negatives + 1]``: the target among negatives from the target's domain that the
    user never interacted with there, the target at a seeded random position."""
    rng = np.random.default_rng(seed)
    target_domain = data.item_domain[target]
    negatives = np.empty((len(target), num_negatives), dtype=np.int32)
    for domain in np.unique(target_domain):
        rows = np.flatnonzero(target_domain == domain)
        inside = data.domain == domain
        # Raw user ids, so that a sampler's error names a user one can look up.
        inter = pd.DataFrame(
            {"user_id": data.users[data.user[inside]], "item_id": data.item[inside]}
        )
        try:
            negatives[rows] = uniform_negatives(inter, data.users[user[rows]], num_negatives, rng)
        except DataError as exc:
            raise DataError(f"CPT domain {names[domain]!r}: {exc}") from None
    slot = (
        np.arange(num_negatives + 1)[None, :]
        == rng.integers(0, num_negatives + 1, len(target))[:, None]
    )
    out = np.empty(slot.shape, dtype=np.int32)
    out[slot] = target
    out[~slot] = negatives.ravel()
    return out


# ------------------------------------------------------------------ files
def _schema_meta(domains: list[str]) -> dict[bytes, bytes]:
    return {_DOMAINS_META: json.dumps(domains).encode()}


def write_samples(
    path: Path,
    phase: np.ndarray,
    windows: Windows,
    candidates: np.ndarray,
    data: Interactions,
    domains: list[str],
) -> Path:
    """``samples.parquet``: one row per sample, arrays stored as fixed-size and plain lists."""
    n, width = candidates.shape
    table = pa.table(
        {
            "phase": pa.array(phase, pa.int8()),
            "domain": pa.array(data.item_domain[windows.target], pa.int16()),
            "user": pa.DictionaryArray.from_arrays(
                pa.array(windows.user, pa.int32()), pa.array(data.users, pa.string())
            ),
            "history": pa.FixedSizeListArray.from_arrays(
                pa.array(windows.history.ravel(), pa.int32()), windows.history.shape[1]
            ),
            "candidates": pa.ListArray.from_arrays(
                pa.array(np.arange(n + 1, dtype=np.int32) * width),
                pa.array(candidates.ravel(), pa.int32()),
            ),
            "target": pa.array(windows.target, pa.int32()),
        }
    ).replace_schema_metadata(_schema_meta(domains))
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def write_items(path: Path, items: pd.DataFrame, domains: list[str]) -> Path:
    table = pa.Table.from_pandas(items, preserve_index=False)
    table = table.replace_schema_metadata({**table.schema.metadata, **_schema_meta(domains)})
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp))


# ------------------------------------------------------------------ the stage
def _title_words(items: pd.DataFrame, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Words of the history and candidate titles per sample: a cheap prompt-length estimate."""
    words = items["title"].str.split().str.len().to_numpy(dtype=np.int64)
    shown = np.where(history >= 0, words[np.maximum(history, 0)], 0).sum(axis=1)
    return shown + words[candidates].sum(axis=1)


def _mean(values: np.ndarray) -> float:
    return round(float(values.mean()), 1) if len(values) else 0.0


def summarise(
    data: Interactions,
    domains: list[str],
    phase: np.ndarray,
    windows: Windows,
    words: np.ndarray,
) -> dict[str, Any]:
    """The manifest's metrics: how much each domain and the mixing contribute."""
    target_domain = data.item_domain[windows.target].astype(np.int64)
    n = len(domains)

    def per_domain(mask: np.ndarray) -> dict[str, int]:
        counts = np.bincount(target_domain[mask], minlength=n)
        return dict(zip(domains, counts.tolist(), strict=True))

    def users(mask: np.ndarray) -> np.ndarray:
        return np.unique(target_domain[mask] * len(data.users) + windows.user[mask])

    specific, mixed = phase == DOMAIN_SPECIFIC, phase == MIXED
    user_domain = users(specific) // len(data.users)
    return {
        "domains": domains,
        "interactions": dict(
            zip(domains, np.bincount(data.domain, minlength=n).tolist(), strict=True)
        ),
        "domain_specific_samples": per_domain(specific),
        "mixed_samples": int(mixed.sum()),
        "mixed_samples_per_domain": per_domain(mixed),
        "users": dict(zip(domains, np.bincount(user_domain, minlength=n).tolist(), strict=True)),
        "mixed_users": len(np.unique(windows.user[mixed])),
        "title_words": {
            "domain_specific_mean": _mean(words[specific]),
            "mixed_mean": _mean(words[mixed]),
            "total": int(words.sum()),
        },
    }


def build_corpus(
    folder: Path, config: RunConfig, plugins: Plugins, domains: dict
) -> dict[str, Any]:
    """Load the domains, cut both kinds of samples, draw candidates, write the two files."""
    start = time.perf_counter()
    settings = _settings(config)
    rule = plugins.mixing_rules.get(settings["mixing_rule"])
    names = list(domains)
    data = encode_domains([domains[n].load(_domain_config(config, n)) for n in names], names)
    specific = domain_specific_samples(data, settings)
    mixed = mixed_samples(data, settings, rule)
    windows = Windows.concat([specific, mixed])
    phase = np.repeat(
        np.array([DOMAIN_SPECIFIC, MIXED], np.int8), [len(specific.user), len(mixed.user)]
    )
    candidates = draw_candidates(
        data,
        names,
        windows.user,
        windows.target,
        int(settings["num_negatives"]),
        int(settings["cpt_seed"]),
    )
    write_samples(folder / SAMPLES, phase, windows, candidates, data, names)
    write_items(folder / ITEMS, data.items, names)
    words = _title_words(data.items, windows.history, candidates)
    summary = summarise(data, names, phase, windows, words)
    return {**summary, "build_seconds": round(time.perf_counter() - start, 2)}


#: The behaviour corpus of the CPT domains (``samples.parquet``, ``items.parquet``).
CORPUS = Stage("corpus", reads=CORPUS_KEYS, uses=("data_path",), build=build_corpus)


def corpus_domains(config: RunConfig, plugins: Plugins) -> tuple[dict, dict[str, Any]]:
    """The CPT domains by name and what the corpus hash derives from them (names, files)."""
    settings = _settings(config)
    plugins.mixing_rules.get(settings["mixing_rule"])  # an unknown rule fails before loading
    names = resolve_cpt_domains(config, plugins)
    domains = {n: resolve_domain(_domain_config(config, n), plugins) for n in names}
    sources = {n: domain_source(d, _domain_config(config, n)) for n, d in domains.items()}
    return domains, {"domains": names, "sources": sources}


def corpus_stage(config: RunConfig, plugins: Plugins, force: bool = False) -> Path:
    """Run (or reuse) the corpus stage; its folder holds ``samples.parquet`` and ``items.parquet``."""
    domains, derived = corpus_domains(config, plugins)
    return run_stage(CORPUS, config, derived=derived, force=force, plugins=plugins, domains=domains)


# ------------------------------------------------------------------ reading it back
def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A list column whose rows all have one length, as a 2-d array (no per-row Python)."""
    array = column.combine_chunks()
    values = array.flatten().to_numpy()
    width = getattr(column.type, "list_size", None) or (len(values) // max(len(array), 1))
    return values.reshape(len(array), width)


def _dictionary(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Codes and values of a dictionary column (chunks unified first)."""
    chunks = column.unify_dictionaries().chunks
    if not chunks:
        return np.zeros(0, np.int32), np.zeros(0, object)
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks])
    return codes.astype(np.int32), chunks[0].dictionary.to_numpy(zero_copy_only=False)


@dataclass
class Corpus:
    """The CPT corpus as arrays; ``samples(indices)`` renders rows for the LLM batcher."""

    domains: list[str]
    phase: np.ndarray  # [n] int8: 0 domain-specific, 1 mixed
    domain: np.ndarray  # [n] int16: the target's domain index
    user: np.ndarray  # [n] int32 code into ``users``
    users: np.ndarray  # raw user ids
    history: np.ndarray  # [n, history_len] int32 item codes, -1 padded on the left
    candidates: np.ndarray  # [n, num_negatives + 1] int32 item codes
    target: np.ndarray  # [n] int32 item code
    item_domain: np.ndarray  # [n_items] int16, by item code
    item_ids: np.ndarray  # [n_items] raw item ids, by item code
    titles: dict[int, str]  # item code -> title

    def __len__(self) -> int:
        return len(self.target)

    def phase_indices(self, phase: int) -> np.ndarray:
        """Row indices of one phase, in file order."""
        return np.flatnonzero(self.phase == phase)

    def samples(self, indices: Sequence[int] | np.ndarray) -> list[LLMSample]:
        """``LLMSample``s whose item ids are the integer codes (keys of ``titles``)."""
        from cprec_recbole.llm.batching import LLMSample

        rows = np.asarray(indices, dtype=np.int64)
        histories = self.history[rows].tolist()
        return [
            LLMSample(
                user_id=str(self.users[u]),
                history=[c for c in h if c != PAD],
                candidates=cands,
                target=t,
            )
            for u, h, cands, t in zip(
                self.user[rows].tolist(),
                histories,
                self.candidates[rows].tolist(),
                self.target[rows].tolist(),
                strict=True,
            )
        ]


def load_corpus(folder: str | Path) -> Corpus:
    """Read a corpus stage folder back into arrays."""
    folder = Path(folder)
    table = pq.read_table(folder / SAMPLES)
    items = pq.read_table(folder / ITEMS)
    user, users = _dictionary(table.column("user"))
    codes = items.column("code").to_numpy()
    return Corpus(
        domains=json.loads(table.schema.metadata[_DOMAINS_META]),
        phase=table.column("phase").to_numpy(),
        domain=table.column("domain").to_numpy(),
        user=user,
        users=users,
        history=_matrix(table.column("history")).astype(np.int32, copy=False),
        candidates=_matrix(table.column("candidates")).astype(np.int32, copy=False),
        target=table.column("target").to_numpy(),
        item_domain=items.column("domain").to_numpy(),
        item_ids=items.column("item_id").to_numpy(zero_copy_only=False),
        titles=dict(zip(codes.tolist(), items.column("title").to_pylist(), strict=True)),
    )
