"""Amazon Review Data (2018) raw files -> RecBole atomic files, one paper domain at a time.

Inputs are the official per-category "ratings only" CSV (``<Category>.csv``: item, user,
rating, timestamp; no header) and the metadata JSON lines (``meta_<Category>.json[.gz]``).
Only title cleaning and consistency fixes happen here; k-core filtering belongs to the
pipeline, so the atomic files keep every titled interaction.
"""

from __future__ import annotations

import csv
import itertools
import logging
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cprec_recbole.data.atomic import write_atomic_files
from cprec_recbole.data.titles import clean_titles, drop_untitled
from cprec_recbole.errors import DataError
from cprec_recbole.io import write_atomic

logger = logging.getLogger(__name__)

AMAZON2018_CATEGORIES: dict[str, str] = {
    "Game": "Video_Games",
    "Music": "Musical_Instruments",
    "Industry": "Industrial_and_Scientific",
    "Automotive": "Automotive",
    "Clothing": "Clothing_Shoes_and_Jewelry",
    "Electronic": "Electronics",
    "Food": "Grocery_and_Gourmet_Food",
    "Home": "Home_and_Kitchen",
    "Movie": "Movies_and_TV",
    "Phone": "Cell_Phones_and_Accessories",
}

AMAZON2018_BASE_URL = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2"

_RATINGS_COLUMNS = ["item_id", "user_id", "rating", "timestamp"]
_DIAGNOSE_LINES = 1_000_000
_META_CHUNK_LINES = 100_000
_DOWNLOAD_BLOCK = 1 << 20


def amazon2018_category(name: str) -> str:
    """Amazon 2018 category for a paper domain name; unknown names fail loudly."""
    try:
        return AMAZON2018_CATEGORIES[name]
    except KeyError:
        known = ", ".join(sorted(AMAZON2018_CATEGORIES))
        raise ValueError(f"unknown Amazon-2018 domain {name!r}; known names: {known}") from None


def amazon2018_urls(name: str) -> tuple[str, str]:
    """Official (ratings CSV, metadata JSON.gz) URLs for a paper domain name."""
    category = amazon2018_category(name)
    return (
        f"{AMAZON2018_BASE_URL}/categoryFilesSmall/{category}.csv",
        f"{AMAZON2018_BASE_URL}/metaFiles2/meta_{category}.json.gz",
    )


def _raw_paths(name: str, raw_dir: Path) -> tuple[Path, list[Path]]:
    """Ratings path and metadata candidates (gz first, as downloaded) for a domain."""
    category = amazon2018_category(name)
    raw_dir = Path(raw_dir)
    meta = [raw_dir / f"meta_{category}.json.gz", raw_dir / f"meta_{category}.json"]
    return raw_dir / f"{category}.csv", meta


# --------------------------------------------------------------------------- ratings CSV


def _first_bad_ratings_line(path: Path) -> tuple[int, str] | None:
    """Locate the first malformed ratings line (1-based) and say why; None if all parse.

    Only run after the fast parser failed, so error messages can point at a line.
    """
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        start = 0
        while lines := list(itertools.islice(handle, _DIAGNOSE_LINES)):
            text = pd.Series(lines, dtype=object).str.rstrip("\r\n")
            n_fields = text.str.count(",") + 1
            parts = text.str.split(",", n=3, expand=True).reindex(columns=range(4))
            rating = pd.to_numeric(parts[2], errors="coerce").to_numpy(dtype="float64")
            stamp = pd.to_numeric(parts[3], errors="coerce").to_numpy(dtype="float64")
            conditions = [
                (n_fields != 4).to_numpy(),
                (parts[0].fillna("") == "").to_numpy(),
                (parts[1].fillna("") == "").to_numpy(),
                ~np.isfinite(rating),
                ~np.isfinite(stamp),
            ]
            reason = np.select(conditions, np.arange(1, 6), default=0)
            bad = np.flatnonzero(reason)
            if bad.size:
                row = int(bad[0])
                why = {
                    1: f"expected 4 comma-separated columns (item,user,rating,timestamp), "
                    f"found {int(n_fields.iloc[row])}",
                    2: "empty item id",
                    3: "empty user id",
                    4: f"non-numeric rating {parts[2].iloc[row]!r}",
                    5: f"non-numeric timestamp {parts[3].iloc[row]!r}",
                }[int(reason[row])]
                return start + row + 1, f"{why}: {text.iloc[row][:200]!r}"
            start += len(lines)
    return None


def _ratings_error(path: Path, cause: Exception | None) -> DataError:
    """A DataError naming the file, and the first bad line when one can be found."""
    found = _first_bad_ratings_line(path)
    if found is not None:
        line, why = found
        return DataError(f"{path}:{line}: {why}")
    return DataError(f"{path}: cannot read as an Amazon-2018 ratings CSV: {cause}")


def read_ratings_csv(path: Path) -> pd.DataFrame:
    """Read ``<Category>.csv`` into item_id, user_id, rating, timestamp columns.

    Ids become categoricals (tens of millions of rows fit in memory that way); integral
    timestamps become int64 so the atomic file shows plain Unix seconds.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # A surplus field on line 1 is only a ParserWarning (data silently lost).
            warnings.simplefilter("error", pd.errors.ParserWarning)
            ratings = pd.read_csv(
                path,
                header=None,
                names=_RATINGS_COLUMNS,
                index_col=False,
                low_memory=False,  # one pass: chunked categoricals are several times slower
                dtype={
                    "item_id": "category",
                    "user_id": "category",
                    "rating": "float64",
                    "timestamp": "float64",
                },
                quoting=csv.QUOTE_NONE,
                keep_default_na=False,
                skip_blank_lines=False,
                encoding="utf-8",
            )
    except (ValueError, pd.errors.ParserError, pd.errors.ParserWarning) as err:
        raise _ratings_error(path, err) from err
    stamps = ratings["timestamp"].to_numpy()
    suspicious = (
        ~np.isfinite(stamps)
        | ~np.isfinite(ratings["rating"].to_numpy())
        | (ratings["item_id"] == "").to_numpy()
        | (ratings["user_id"] == "").to_numpy()
    )
    if suspicious.any():
        raise _ratings_error(path, None)
    if (stamps == np.floor(stamps)).all():
        ratings["timestamp"] = stamps.astype("int64")
    return ratings


# --------------------------------------------------------------------------- metadata


def _json_line_chunks(path: Path, chunk_lines: int) -> Iterator[tuple[int, pd.DataFrame]]:
    """Yield (first 1-based line, records) chunks; parse errors name the file and lines."""
    first = 1
    try:
        reader = pd.read_json(
            path,
            lines=True,
            chunksize=chunk_lines,
            dtype=False,  # keep ASINs such as "0001234567" as strings
            convert_dates=False,
            compression="infer",
            encoding="utf-8",
        )
        with reader:
            chunks = iter(reader)
            while (chunk := next(chunks, None)) is not None:
                yield first, chunk
                first += len(chunk)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(
            f"{path}: cannot read metadata JSON lines (lines {first}-"
            f"{first + chunk_lines - 1}): {err}"
        ) from err


def read_meta_titles(path: Path, chunk_lines: int = _META_CHUNK_LINES) -> pd.DataFrame:
    """Read (item_id, raw title) from metadata JSON lines, plain or gzipped.

    Read in chunks and cut down to two columns at once, because the records carry large
    fields (descriptions, image lists) that are not needed.
    """
    path = Path(path)
    frames = [pd.DataFrame({"item_id": pd.Series(dtype=object), "title": pd.Series(dtype=object)})]
    for first, chunk in _json_line_chunks(path, chunk_lines):
        if "asin" not in chunk.columns or chunk["asin"].isna().any():
            last = first + len(chunk) - 1
            raise DataError(f"{path}: lines {first}-{last}: a record has no 'asin'")
        title = chunk["title"] if "title" in chunk.columns else pd.Series(None, index=chunk.index)
        frames.append(pd.DataFrame({"item_id": chunk["asin"].astype(str), "title": title}))
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- conversion


def build_amazon2018_frames(
    ratings: pd.DataFrame, meta: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Clean titles and keep the titled, de-duplicated interactions and their items.

    Returns (inter: user_id, item_id, timestamp; items: item_id, title sorted by id).
    Items nobody interacted with are left out: they would only widen the candidate set.
    Rows are not sorted here; :func:`write_atomic_files` fixes the order.
    """
    items = drop_untitled(meta.assign(title=clean_titles(meta["title"])), logger)
    unique = items.drop_duplicates("item_id", keep="first")
    if len(unique) < len(items):
        logger.info("kept the first title of %d repeated item id(s)", len(items) - len(unique))
    inter = ratings[["user_id", "item_id", "timestamp"]]
    titled = inter["item_id"].isin(unique["item_id"]).to_numpy()
    if not titled.all():
        logger.warning("dropped %d interaction(s) whose item has no title", int((~titled).sum()))
    inter = inter[titled]
    deduplicated = inter.drop_duplicates()
    if len(deduplicated) < len(inter):
        logger.info("dropped %d duplicate interaction(s)", len(inter) - len(deduplicated))
    inter = deduplicated.reset_index(drop=True)
    for column in ("user_id", "item_id"):
        if isinstance(inter[column].dtype, pd.CategoricalDtype):
            inter[column] = inter[column].cat.remove_unused_categories()
    items = unique[unique["item_id"].isin(inter["item_id"])]
    return inter, items.sort_values("item_id", kind="stable").reset_index(drop=True)


def convert_amazon2018(name: str, raw_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """Convert one paper domain's raw Amazon-2018 files into ``<out_dir>/<name>/<name>.*``."""
    ratings_path, meta_candidates = _raw_paths(name, raw_dir)
    meta_path = next((path for path in meta_candidates if path.is_file()), None)
    missing = [] if ratings_path.is_file() else [f"{ratings_path} (ratings CSV)"]
    if meta_path is None:
        missing.append(" or ".join(map(str, meta_candidates)) + " (metadata)")
    if missing:
        raise FileNotFoundError(
            f"Amazon-2018 raw file(s) for domain {name!r} not found: {'; '.join(missing)}. "
            f"Run download_amazon2018({name!r}, {str(raw_dir)!r}) or place the files there."
        )
    logger.info("converting %s from %s and %s", name, ratings_path, meta_path)
    inter, items = build_amazon2018_frames(
        read_ratings_csv(ratings_path), read_meta_titles(meta_path)
    )
    logger.info("%s: %d interactions, %d items", name, len(inter), len(items))
    return write_atomic_files(inter, items, out_dir, name)


# --------------------------------------------------------------------------- download


def _download(url: str, target: Path) -> None:
    """Stream ``url`` into a temporary file beside ``target``, then rename it into place."""
    request = urllib.request.Request(url, headers={"User-Agent": "cprec-recbole"})

    def fetch(tmp: Path) -> None:
        with tmp.open("wb") as out, urllib.request.urlopen(request, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name
            ) as bar:
                while block := response.read(_DOWNLOAD_BLOCK):
                    out.write(block)
                    bar.update(len(block))
            size = out.tell()
        if total is not None and size != total:
            raise OSError(f"{url}: got {size} of {total} bytes")

    try:
        write_atomic(target, fetch)
    except urllib.error.URLError as err:
        raise OSError(f"cannot download {url} to {target}: {err}") from err


def download_amazon2018(name: str, raw_dir: Path) -> tuple[Path, Path]:
    """Fetch the official ratings CSV and metadata for a paper domain into ``raw_dir``.

    Files already present are kept, so an interrupted run can simply be repeated.
    """
    ratings_url, meta_url = amazon2018_urls(name)
    ratings_path, meta_candidates = _raw_paths(name, raw_dir)
    Path(raw_dir).mkdir(parents=True, exist_ok=True)
    if not ratings_path.is_file():
        _download(ratings_url, ratings_path)
    meta_path = next((path for path in meta_candidates if path.is_file()), None)
    if meta_path is None:
        meta_path = meta_candidates[0]
        _download(meta_url, meta_path)
    return ratings_path, meta_path
