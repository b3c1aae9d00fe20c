"""Writing RecBole atomic files (``<Name>.inter`` / ``<Name>.item``), shared by every converter.

The files are tab-separated UTF-8 with typed RecBole headers and no quoting at all, so a
value must never contain a tab or a line break (cleaned titles never do). Each file is
written to a temporary file beside its target and moved into place with ``os.replace``
(:func:`cprec_recbole.io.write_atomic`), so a crash never leaves a half-written file.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from cprec_recbole.data.domain import INTER_FIELDS, ITEM_FIELDS, AtomicFileDomain
from cprec_recbole.errors import DataError
from cprec_recbole.io import write_atomic

_SEPARATORS = r"[\t\r\n]"


def _lexical_codes(values: pd.Series) -> np.ndarray:
    """Integer codes whose order is the string order of ``values`` (categoricals too)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        categories = values.cat.categories.astype(str).to_numpy()
        rank = np.argsort(np.argsort(categories, kind="stable"), kind="stable")
        return rank[values.cat.codes.to_numpy()]
    text = values if values.dtype == object else values.astype(str)
    return pd.factorize(text, sort=True)[0]


def sort_interactions(inter: pd.DataFrame) -> pd.DataFrame:
    """Order rows by user_id (string order) then timestamp, keeping ties in input order.

    Sequential recommenders read each user's history in this order; ``np.lexsort`` is
    stable, so equal timestamps keep the order the source gave them.
    """
    order = np.lexsort((inter["timestamp"].to_numpy(), _lexical_codes(inter["user_id"])))
    return inter.iloc[order].reset_index(drop=True)


def _check_frame(frame: pd.DataFrame, fields: dict[str, str], what: str) -> pd.DataFrame:
    """Select the atomic-file columns, refusing values that would corrupt unquoted TSV."""
    missing = [column for column in fields if column not in frame.columns]
    if missing:
        raise ValueError(f"{what} frame lacks column(s) {missing}; it has {list(frame.columns)}")
    frame = frame[list(fields)]
    for column, kind in fields.items():
        values = frame[column]
        nulls = int(values.isna().sum())
        if nulls:
            raise DataError(f"{what} column {column!r} has {nulls} missing value(s)")
        if kind == "float":
            numeric = pd.to_numeric(values, errors="coerce")
            bad = ~np.isfinite(numeric.to_numpy(dtype="float64"))
            if bad.any():
                raise DataError(
                    f"{what} column {column!r} has {int(bad.sum())} non-numeric value(s), "
                    f"e.g. {values[bad].iloc[0]!r}"
                )
            continue
        if isinstance(values.dtype, pd.CategoricalDtype):
            values = pd.Series(values.cat.remove_unused_categories().cat.categories)
        text = values.astype(str)
        bad = text.str.contains(_SEPARATORS, regex=True)
        if bad.any():
            raise DataError(
                f"{what} column {column!r} has {int(bad.sum())} value(s) with a tab or line "
                f"break, e.g. {text[bad].iloc[0]!r}; clean them first (see clean_titles)"
            )
    return frame


def _write_tsv(frame: pd.DataFrame, fields: dict[str, str], path: Path) -> Path:
    """Write ``frame`` as unquoted TSV with a typed header, atomically."""
    header = [f"{column}:{kind}" for column, kind in fields.items()]
    return write_atomic(
        path,
        lambda tmp: frame.to_csv(
            tmp,
            sep="\t",
            header=header,
            index=False,
            quoting=csv.QUOTE_NONE,
            lineterminator="\n",
            encoding="utf-8",
        ),
    )


def write_atomic_files(
    inter: pd.DataFrame, items: pd.DataFrame, out_dir: Path, name: str
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>/<name>.inter`` and ``.item``, each replaced atomically.

    ``inter`` needs user_id, item_id, timestamp and ``items`` needs item_id, title; other
    columns are ignored. Interactions are (re)sorted with :func:`sort_interactions` so
    every converter yields the same row order.
    """
    inter = sort_interactions(_check_frame(inter, INTER_FIELDS, "interaction"))
    items = _check_frame(items, ITEM_FIELDS, "item")
    duplicated = items["item_id"].duplicated()
    if duplicated.any():
        raise DataError(
            f"item frame has {int(duplicated.sum())} duplicated item_id(s), "
            f"e.g. {items['item_id'][duplicated].iloc[0]!r}"
        )
    inter_path, item_path = AtomicFileDomain(name).paths(out_dir)
    return _write_tsv(inter, INTER_FIELDS, inter_path), _write_tsv(items, ITEM_FIELDS, item_path)
