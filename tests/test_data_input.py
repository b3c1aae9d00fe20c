"""Bad input gets a clear error naming the file, line or key; good but odd input is read right."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest

from cprec_recbole.command import build_config
from cprec_recbole.data.domain import (
    INTER_FIELDS,
    ITEM_FIELDS,
    AtomicFileDomain,
    iter_atomic,
    read_atomic,
)
from cprec_recbole.data.prepare import prepare
from cprec_recbole.errors import DataError
from cprec_recbole.plugins import UnknownNameError
from tests.conftest import INTER_HEADER, ITEM_HEADER, cyclic_sequences, write_dataset

BAD_FILES = {
    "wrong_column_count": (
        "x.inter",
        f"{INTER_HEADER}\nu1\ti1\t1\nu1\ti2\t2\textra\n",
        r"x\.inter:3: expected 3 tab-separated fields",
    ),
    "missing_field": ("x.inter", f"{INTER_HEADER}\nu1\ti1\t1\nu1\ti2\n", r"x\.inter:3: .*found 2"),
    "non_numeric_timestamp": (
        "x.inter",
        f"{INTER_HEADER}\nu1\ti1\t1\nu1\ti2\tyesterday\n",
        r"x\.inter:3: field timestamp must be a number.*yesterday",
    ),
    "duplicate_header_field": (
        "x.inter",
        "user_id:token\titem_id:token\titem_id:token\nu1\ti1\ti1\n",
        r"x\.inter:1: duplicate header field\(s\) item_id",
    ),
    "header_lacks_a_field": (
        "x.inter",
        "user_id:token\titem:token\ttimestamp:float\nu1\ti1\t1\n",
        r"lacks item_id",
    ),
    "tab_in_title": (
        "x.item",
        f"{ITEM_HEADER}\ni1\tGood title\ni2\tBad\ttitle\n",
        r"x\.item:3: .*must not contain a tab",
    ),
}


@pytest.mark.parametrize("name, text, message", BAD_FILES.values(), ids=list(BAD_FILES))
def test_malformed_atomic_file_is_an_error_naming_file_line_and_problem(
    tmp_path, name, text, message
):
    path = tmp_path / name
    path.write_text(text)
    fields = INTER_FIELDS if name.endswith(".inter") else ITEM_FIELDS
    with pytest.raises(DataError, match=message):
        read_atomic(path, fields)


def test_title_with_an_unmatched_quote_is_kept_verbatim_and_swallows_nothing(tmp_path):
    path = tmp_path / "x.item"
    path.write_text(f'{ITEM_HEADER}\ni1\t"Deluxe Edition\ni2\tSecond\ni3\tThird "x\n')
    items = read_atomic(path, ITEM_FIELDS)
    assert items["title"].tolist() == ['"Deluxe Edition', "Second", 'Third "x']


ODD_ENCODINGS = {"bom": ("\ufeff", "\n"), "crlf": ("", "\r\n"), "bom_and_crlf": ("\ufeff", "\r\n")}


@pytest.mark.parametrize("prefix, newline", ODD_ENCODINGS.values(), ids=list(ODD_ENCODINGS))
def test_atomic_files_with_a_byte_order_mark_or_crlf_read_like_plain_ones(
    tmp_path, prefix, newline
):
    """Files saved by Windows editors (Notepad, Excel) start with a BOM and end lines in CRLF."""
    files = {
        "x.inter": (INTER_FIELDS, [INTER_HEADER, "u1\ti1\t1", "u1\ti2\t2.5"]),
        "x.item": (ITEM_FIELDS, [ITEM_HEADER, "i1\tHalo 3", "i2\tMario Kart"]),
    }
    for name, (fields, lines) in files.items():
        plain, odd = tmp_path / f"plain_{name}", tmp_path / name
        plain.write_bytes(("\n".join(lines) + "\n").encode())
        odd.write_bytes((prefix + newline.join(lines) + newline).encode("utf-8"))
        assert list(read_atomic(odd, fields).columns) == list(fields)
        pd.testing.assert_frame_equal(read_atomic(odd, fields), read_atomic(plain, fields))


@pytest.mark.parametrize("prefix, newline", ODD_ENCODINGS.values(), ids=list(ODD_ENCODINGS))
def test_a_byte_order_mark_or_crlf_keeps_bad_lines_named(tmp_path, prefix, newline):
    path = tmp_path / "x.inter"
    lines = [INTER_HEADER, "u1\ti1\t1", "u1\ti2\tyesterday"]
    path.write_bytes((prefix + newline.join(lines) + newline).encode("utf-8"))
    with pytest.raises(DataError, match=r"x\.inter:3: field timestamp must be a number, got 'yes"):
        read_atomic(path, INTER_FIELDS)


def test_missing_item_file_names_the_path(tmp_path):
    root = write_dataset(tmp_path, "D", {"u1": ["a", "b", "c"]})
    (root / "D" / "D.item").unlink()
    with pytest.raises(DataError, match=r"D\.item is missing"):
        AtomicFileDomain("D").load({"data_path": str(root)})


def test_unknown_dataset_suggests_close_names_and_names_the_looked_up_path(tmp_path, plugins):
    root = write_dataset(tmp_path, "Toys", cyclic_sequences(10, 30, 5))
    config = build_config("SASRec", "Toy", plugins, overrides={"data_path": str(root)})
    with pytest.raises(UnknownNameError) as info:
        prepare(config, plugins)
    message = str(info.value)
    assert "Did you mean: Toys" in message
    assert str(root / "Toy" / "Toy.inter") in message and "--data_path" in message


def test_unknown_model_suggests_close_names(plugins):
    with pytest.raises(UnknownNameError, match="Did you mean: SASRec"):
        build_config("SASrec", "Tiny", plugins)


def test_dataset_emptied_by_k_core_is_an_error_that_says_what_to_change(tmp_path, plugins):
    root = write_dataset(tmp_path, "Sparse", {f"u{u}": [f"i{u}a", f"i{u}b"] for u in range(5)})
    config = build_config(
        "SASRec",
        "Sparse",
        plugins,
        overrides={"data_path": str(root), "output_dir": str(tmp_path / "out")},
    )
    with pytest.raises(DataError, match=r"Sparse: no interactions left after the 3-core"):
        prepare(config, plugins)


def test_failed_data_stage_leaves_earlier_stages_untouched(tmp_path, plugins):
    root = write_dataset(tmp_path, "Tiny", cyclic_sequences())
    overrides = {"data_path": str(root), "output_dir": str(tmp_path / "out")}
    good = prepare(build_config("SASRec", "Tiny", plugins, overrides=overrides), plugins)
    before = {p: p.read_bytes() for p in good.folder.rglob("*") if p.is_file()}
    inter = root / "Tiny" / "Tiny.inter"
    inter.write_text(inter.read_text() + "broken line without tabs\n")
    with pytest.raises(DataError, match="Tiny.inter"):
        prepare(build_config("SASRec", "Tiny", plugins, overrides=overrides), plugins)
    assert {p: p.read_bytes() for p in good.folder.rglob("*") if p.is_file()} == before


def test_data_stage_follows_file_contents_not_their_place_or_time(tmp_path, plugins):
    """Data re-copied elsewhere (new paths, new mtimes) keeps every cached stage; an edit not."""
    out = {"output_dir": str(tmp_path / "out")}
    first = write_dataset(tmp_path / "a", "Tiny", cyclic_sequences())
    copy = shutil.copytree(first, tmp_path / "b")
    inter = copy / "Tiny" / "Tiny.inter"
    os.utime(inter, ns=(1, 1))

    def folder(root):
        config = build_config("SASRec", "Tiny", plugins, overrides={**out, "data_path": str(root)})
        return prepare(config, plugins).folder

    assert folder(first) == folder(copy)
    inter.write_text(inter.read_text().replace("\t1000\n", "\t999\n", 1))
    assert folder(copy) != folder(first)


def test_an_atomic_file_read_in_small_chunks_is_the_same_and_names_the_same_bad_line(tmp_path):
    path = tmp_path / "x.inter"
    lines = [f"u{i % 7}\ti{i}\t{1000 + i}" for i in range(50)]
    path.write_bytes(f"\ufeff{INTER_HEADER}\r\n{chr(10).join(lines)}\n\n".encode())
    whole = read_atomic(path, INTER_FIELDS)
    chunks = list(iter_atomic(path, INTER_FIELDS, chunk_bytes=40))
    assert len(chunks) > 5 and whole["item_id"].tolist() == [f"i{i}" for i in range(50)]
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole)
    lines[41] = "u1\ti41\tlater"
    path.write_text(f"{INTER_HEADER}\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"x\.inter:43: field timestamp must be a number"):
        list(iter_atomic(path, INTER_FIELDS, chunk_bytes=40))
