"""Domains: named sources of interactions and item titles, read from RecBole atomic files."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cprec_recbole.data.titles import clean_titles, drop_untitled
from cprec_recbole.errors import DataError

logger = logging.getLogger(__name__)

INTER_FIELDS = {"user_id": "token", "item_id": "token", "timestamp": "float"}
ITEM_FIELDS = {"item_id": "token", "title": "token_seq"}


def _header(path: Path, line: str) -> list[str]:
    names = [field.split(":", 1)[0] for field in line.rstrip("\r").split("\t")]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(
            f"{path}:1: duplicate header field(s) {', '.join(duplicates)}; "
            "each column name must occur once"
        )
    return names


def read_atomic(path: Path, fields: dict[str, str]) -> pd.DataFrame:
    """Read the ``fields`` columns of a RecBole atomic file, strictly.

    Quotes are plain characters (RecBole's default quoting would swallow lines after a title
    that starts with ``"``); a wrong field count or a non-numeric float names the line. A UTF-8
    byte-order mark and CRLF line ends (files saved on Windows) read as if absent.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig drops a leading BOM
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    lines = pd.Series(text.split("\n"))
    lines = lines.str.rstrip("\r")
    if lines.empty or not lines.iloc[0]:
        raise DataError(f"{path}: empty file; expected a header like 'user_id:token\\t...'")
    names = _header(path, lines.iloc[0])
    missing = [f for f in fields if f not in names]
    if missing:
        raise DataError(
            f"{path}:1: header has {', '.join(names)} but lacks {', '.join(missing)} "
            f"(expected e.g. {chr(9).join(f'{k}:{v}' for k, v in fields.items())})"
        )
    body = lines.iloc[1:]
    body = body[body.str.len() > 0]
    counts = body.str.count("\t")
    bad = counts[counts != len(names) - 1]
    if len(bad):
        line_no = int(bad.index[0]) + 1
        raise DataError(
            f"{path}:{line_no}: expected {len(names)} tab-separated fields "
            f"({', '.join(names)}), found {int(bad.iloc[0]) + 1}. A title must not contain a tab."
        )
    frame = pd.read_csv(
        io.StringIO("\n".join(body)),
        sep="\t",
        header=None,
        names=names,
        usecols=list(fields),
        dtype=str,
        quoting=csv.QUOTE_NONE,
        keep_default_na=False,
        na_filter=False,
    )
    frame.index = body.index + 1  # 1-based line numbers, for the errors below
    for name, kind in fields.items():
        if kind == "float":
            values = pd.to_numeric(frame[name], errors="coerce")
            bad_rows = values.isna()
            if bad_rows.any():
                line_no = int(frame.index[bad_rows.to_numpy()][0])
                raise DataError(
                    f"{path}:{line_no}: field {name} must be a number, "
                    f"got {frame.loc[line_no, name]!r}"
                )
            frame[name] = values.astype("float64")
    return frame.reset_index(drop=True)


def files_fingerprint(paths) -> list:
    """Name, size and content hash per file: a copy of the same data elsewhere, or the same files
    re-copied with new modification times, keep every cached stage (hashing costs ~0.1 s per
    100 MB); any edit redoes them."""
    files = [p for p in paths if p.is_file()]
    return [[p.name, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()] for p in files]


def not_found_message(name: str, looked_up: Path) -> str:
    return (
        f"dataset {name!r} not found: looked for {looked_up}. Provide RecBole atomic files "
        f"{name}/{name}.inter and {name}/{name}.item under a folder and pass it as "
        f"--data_path=FOLDER (e.g. --data_path=../shared/data), or set data_path in a config file."
    )


@dataclass(frozen=True)
class AtomicFileDomain:
    """A domain stored as ``<data_path>/<name>/<name>.inter|.item``."""

    name: str

    def paths(self, data_path: str | Path) -> tuple[Path, Path]:
        folder = Path(data_path) / self.name
        return folder / f"{self.name}.inter", folder / f"{self.name}.item"

    def exists(self, data_path: str | Path) -> bool:
        return self.paths(data_path)[0].is_file()

    def fingerprint(self, config: dict) -> list:
        """What identifies the data: the files' names, sizes and contents."""
        return files_fingerprint(self.paths(config["data_path"]))

    def load(self, config: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
        inter_path, item_path = self.paths(config["data_path"])
        if not inter_path.is_file():
            raise DataError(not_found_message(self.name, inter_path))
        if not item_path.is_file():
            raise DataError(
                f"{item_path} is missing: dataset {self.name!r} has {inter_path.name} but no item "
                f"file. Add {item_path.name} with header 'item_id:token\\ttitle:token_seq'."
            )
        inter = read_atomic(inter_path, INTER_FIELDS)
        items = read_atomic(item_path, ITEM_FIELDS)
        return finish_domain(inter, items, str(item_path))


def finish_domain(
    inter: pd.DataFrame, items: pd.DataFrame, source: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Clean titles, drop untitled items and their interactions, order chronologically (stable)."""
    items = items.assign(title=clean_titles(items["title"])).drop_duplicates("item_id")
    items = drop_untitled(items, logger)
    known = inter["item_id"].isin(items["item_id"])
    if not known.all():
        logger.warning(
            "%s: dropped %d interaction(s) whose item has no title", source, int((~known).sum())
        )
    inter = inter[known].sort_values(["user_id", "timestamp"], kind="stable")
    return inter.reset_index(drop=True), items.reset_index(drop=True)
