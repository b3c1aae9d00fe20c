"""Domains: named sources of interactions and item titles, read from RecBole atomic files."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cprec_recbole.data.titles import clean_titles, drop_untitled
from cprec_recbole.errors import DataError

logger = logging.getLogger(__name__)

INTER_FIELDS = {"user_id": "token", "item_id": "token", "timestamp": "float"}
ITEM_FIELDS = {"item_id": "token", "title": "token_seq"}


def _header(path: Path, line: str, fields: dict[str, str]) -> list[str]:
    line = line.rstrip("\r")
    if not line:
        raise DataError(f"{path}: empty file; expected a header like 'user_id:token\\t...'")
    names = [field.split(":", 1)[0] for field in line.split("\t")]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(
            f"{path}:1: duplicate header field(s) {', '.join(duplicates)}; "
            "each column name must occur once"
        )
    missing = [f for f in fields if f not in names]
    if missing:
        raise DataError(
            f"{path}:1: header has {', '.join(names)} but lacks {', '.join(missing)} "
            f"(expected e.g. {chr(9).join(f'{k}:{v}' for k, v in fields.items())})"
        )
    return names


def read_atomic(path: Path, fields: dict[str, str]) -> pd.DataFrame:
    """Read the ``fields`` columns of a RecBole atomic file, strictly.

    Quotes are plain characters (RecBole's default quoting would swallow lines after a title
    that starts with ``"``); a wrong field count or a non-numeric float names the line. A UTF-8
    byte-order mark and CRLF line ends (files saved on Windows) read as if absent.
    """
    return pd.concat(list(iter_atomic(path, fields)), ignore_index=True)


def iter_atomic(
    path: Path, fields: dict[str, str], chunk_bytes: int = 16 << 20
) -> Iterator[pd.DataFrame]:
    """:func:`read_atomic` in chunks of about ``chunk_bytes`` whole lines (at least one chunk,
    maybe empty), so a file larger than memory can be streamed; errors name the same lines."""
    with open(path, "rb") as handle:
        try:  # -sig drops a leading BOM
            header = handle.readline().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc})") from None
        names = _header(path, header.rstrip("\n"), fields)
        line, rest, empty = 2, b"", True
        while True:
            block = handle.read(chunk_bytes)
            data = rest + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            if block and cut == 0:  # no line end yet: read on
                rest = data
                continue
            data, rest = data[:cut], data[cut:]
            if data or empty:
                frame, lines = _parse_block(path, names, fields, data, line)
                yield frame
                line, empty = line + lines, False
            if not block:
                return


def _line_spans(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start, end (before any CR) and tab count of each line of ``data``, vectorised."""
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw == 10)
    if not data.endswith(b"\n"):
        ends = np.append(ends, len(raw))
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    cr = (ends > starts) & (raw[np.maximum(ends - 1, 0)] == 13)
    tabs = np.flatnonzero(raw == 9)
    count = np.searchsorted(tabs, ends) - np.searchsorted(tabs, starts)
    return starts, ends - cr, count


def _parse_block(
    path: Path, names: list[str], fields: dict[str, str], data: bytes, first_line: int
) -> tuple[pd.DataFrame, int]:
    """The ``fields`` columns of the body lines in ``data`` (the first is ``first_line``), and
    how many lines it holds; empty lines are skipped, bad ones named by number."""
    starts, ends, tabs = _line_spans(data)
    used = ends > starts
    bad = used & (tabs != len(names) - 1)
    if bad.any():
        at = int(np.argmax(bad))
        raise DataError(
            f"{path}:{first_line + at}: expected {len(names)} tab-separated fields "
            f"({', '.join(names)}), found {int(tabs[at]) + 1}. A title must not contain a tab."
        )
    try:
        frame = pd.read_csv(
            io.BytesIO(data),
            sep="\t",
            header=None,
            names=names,
            usecols=list(fields),
            dtype=str,
            quoting=csv.QUOTE_NONE,
            keep_default_na=False,
            na_filter=False,
            encoding="utf-8",
        )
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame({name: pd.Series(dtype=object) for name in fields})
    if len(frame) != int(used.sum()):  # a lone carriage return inside a line splits it
        raise DataError(f"{path}: a line holds a carriage return (\\r) inside a field")
    frame.index = first_line + np.flatnonzero(used)  # 1-based line numbers, for the errors
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
    return frame.reset_index(drop=True), len(starts) - int(not data.endswith(b"\n"))


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
        inter_path, item_path = self._files(config)
        inter = read_atomic(inter_path, INTER_FIELDS)
        items = read_atomic(item_path, ITEM_FIELDS)
        return finish_domain(inter, items, str(item_path))

    def load_chunks(self, config: dict) -> tuple[pd.DataFrame, Iterator[pd.DataFrame]]:
        """:meth:`load` for data larger than memory: the finished items, and the interactions
        chunk by chunk in file order (not sorted), those of untitled items dropped."""
        inter_path, item_path = self._files(config)
        items = finish_items(read_atomic(item_path, ITEM_FIELDS))
        chunks = iter_atomic(inter_path, INTER_FIELDS)
        return items, (titled_only(chunk, items, str(item_path)) for chunk in chunks)

    def _files(self, config: dict) -> tuple[Path, Path]:
        inter_path, item_path = self.paths(config["data_path"])
        if not inter_path.is_file():
            raise DataError(not_found_message(self.name, inter_path))
        if not item_path.is_file():
            raise DataError(
                f"{item_path} is missing: dataset {self.name!r} has {inter_path.name} but no item "
                f"file. Add {item_path.name} with header 'item_id:token\\ttitle:token_seq'."
            )
        return inter_path, item_path


def finish_items(items: pd.DataFrame) -> pd.DataFrame:
    """Clean titles, keep an item's first row, drop untitled items."""
    items = items.assign(title=clean_titles(items["title"])).drop_duplicates("item_id")
    return drop_untitled(items, logger).reset_index(drop=True)


def titled_only(inter: pd.DataFrame, items: pd.DataFrame, source: str) -> pd.DataFrame:
    """The interactions whose item has a title (``items`` finished), with a warning if any go."""
    known = inter["item_id"].isin(items["item_id"])
    if not known.all():
        logger.warning(
            "%s: dropped %d interaction(s) whose item has no title", source, int((~known).sum())
        )
    return inter[known]


def finish_domain(
    inter: pd.DataFrame, items: pd.DataFrame, source: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Clean titles, drop untitled items and their interactions, order chronologically (stable)."""
    items = finish_items(items)
    inter = titled_only(inter, items, source).sort_values(["user_id", "timestamp"], kind="stable")
    return inter.reset_index(drop=True), items
