"""Amazon-2018 raw files -> RecBole atomic files, on tiny raw files written per test."""

from __future__ import annotations

import csv
import gzip
import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from cprec_recbole.data.amazon import (
    AMAZON2018_CATEGORIES,
    amazon2018_urls,
    convert_amazon2018,
    download_amazon2018,
)
from cprec_recbole.data.atomic import write_atomic_files

INTER_HEADER = ["user_id:token", "item_id:token", "timestamp:float"]
ITEM_HEADER = ["item_id:token", "title:token_seq"]


def write_raw(
    raw_dir: Path, ratings: list[str], meta: list[dict], *, gz: bool, category: str = "Video_Games"
) -> None:
    """Write ``<Category>.csv`` and ``meta_<Category>.json[.gz]`` as the official files are."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / f"{category}.csv").write_text("".join(f"{line}\n" for line in ratings), "utf-8")
    text = "".join(json.dumps(record) + "\n" for record in meta)
    if gz:
        with gzip.open(raw_dir / f"meta_{category}.json.gz", "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        (raw_dir / f"meta_{category}.json").write_text(text, "utf-8")


def read_back(path: Path) -> pd.DataFrame:
    """Read an atomic file the strict way: tabs only, quotes are plain characters."""
    return pd.read_csv(
        path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False, encoding="utf-8"
    )


def convert(tmp_path: Path, ratings: list[str], meta: list[dict], *, gz: bool = False):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_raw(raw, ratings, meta, gz=gz)
    inter_path, item_path = convert_amazon2018("Game", raw, out)
    return inter_path, item_path, read_back(inter_path), read_back(item_path)


def test_paper_names_map_to_amazon2018_categories() -> None:
    assert AMAZON2018_CATEGORIES["Game"] == "Video_Games"
    assert AMAZON2018_CATEGORIES["Phone"] == "Cell_Phones_and_Accessories"
    assert len(AMAZON2018_CATEGORIES) == 10
    ratings_url, meta_url = amazon2018_urls("Home")
    assert ratings_url.endswith("/categoryFilesSmall/Home_and_Kitchen.csv")
    assert meta_url.endswith("/metaFiles2/meta_Home_and_Kitchen.json.gz")


def test_unknown_domain_name_lists_the_known_names(tmp_path: Path) -> None:
    for call in (download_amazon2018, convert_amazon2018):
        args = (tmp_path,) if call is download_amazon2018 else (tmp_path, tmp_path)
        with pytest.raises(ValueError, match=r"'Books'.*Automotive.*Phone"):
            call("Books", *args)


@pytest.mark.parametrize("gz", [False, True], ids=["json", "json.gz"])
def test_titles_are_unescaped_and_whitespace_collapsed(tmp_path: Path, gz: bool) -> None:
    meta = [
        {"asin": "0001", "title": "Tom &amp; Jerry &amp;amp; Friends"},
        {"asin": "0002", "title": "  Mario\tKart \n 8  Deluxe "},
    ]
    ratings = ["0001,u1,5.0,100", "0002,u1,4.0,200"]
    *_, items = convert(tmp_path, ratings, meta, gz=gz)
    assert items.to_dict("list") == {
        "item_id:token": ["0001", "0002"],  # leading zeros kept: ASINs are strings
        "title:token_seq": ["Tom & Jerry & Friends", "Mario Kart 8 Deluxe"],
    }


def test_items_without_title_are_dropped_with_their_interactions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    meta = [
        {"asin": "A", "title": "Alpha"},
        {"asin": "B", "title": "  &nbsp; "},  # empty once cleaned
        {"asin": "C"},  # no title field at all
        {"asin": "D", "title": ""},
    ]
    ratings = ["A,u1,5,1", "B,u1,5,2", "C,u2,5,3", "D,u2,4,4", "E,u2,3,5", "A,u3,1,6"]
    *_, inter, items = convert(tmp_path, ratings, meta)
    assert items["item_id:token"].tolist() == ["A"]
    assert inter.values.tolist() == [["u1", "A", "1"], ["u3", "A", "6"]]
    assert "dropped 3 item(s) with no title" in caplog.text
    assert "dropped 4 interaction(s) whose item has no title" in caplog.text  # E: no metadata


def test_exact_duplicate_interactions_are_dropped(tmp_path: Path) -> None:
    meta = [{"asin": "A", "title": "Alpha"}, {"asin": "B", "title": "Beta"}]
    ratings = ["A,u1,5,10", "A,u1,3,10", "A,u1,5,20", "B,u1,5,10"]
    *_, inter, _ = convert(tmp_path, ratings, meta)
    assert inter.values.tolist() == [["u1", "A", "10"], ["u1", "B", "10"], ["u1", "A", "20"]]


def test_output_has_recbole_headers_and_is_sorted_by_user_then_time(tmp_path: Path) -> None:
    meta = [{"asin": a, "title": f"Title {a}"} for a in "ABCD"]
    ratings = ["A,u2,5,30", "B,u10,5,5", "C,u2,5,10", "D,u1,5,99", "B,u2,5,10", "A,u10,5,1"]
    inter_path, item_path, inter, items = convert(tmp_path, ratings, meta)
    assert inter_path == tmp_path / "out" / "Game" / "Game.inter"
    assert item_path == tmp_path / "out" / "Game" / "Game.item"
    assert inter.columns.tolist() == INTER_HEADER
    assert items.columns.tolist() == ITEM_HEADER
    # string order of users ("u1" < "u10" < "u2"); equal timestamps keep the raw order
    assert inter.values.tolist() == [
        ["u1", "D", "99"],
        ["u10", "A", "1"],
        ["u10", "B", "5"],
        ["u2", "C", "10"],
        ["u2", "B", "10"],
        ["u2", "A", "30"],
    ]
    assert items["item_id:token"].tolist() == ["A", "B", "C", "D"]
    assert not list(inter_path.parent.glob(".*.tmp"))  # temp files were renamed away


def test_title_starting_with_a_quote_survives_the_round_trip(tmp_path: Path) -> None:
    title = '"Weird" Al\'s "Game, Vol. 1'
    meta = [{"asin": "A", "title": title}, {"asin": "B", "title": "Plain"}]
    _, item_path, _, items = convert(tmp_path, ["A,u1,5,1", "B,u1,5,2"], meta, gz=True)
    assert items["title:token_seq"].tolist() == [title, "Plain"]
    assert item_path.read_text("utf-8").splitlines()[1] == f"A\t{title}"


@pytest.mark.parametrize(
    ("bad_line", "why"),
    [
        ("B,u2,5", "expected 4 comma-separated columns"),
        ("B,u2,5,100,extra", "expected 4 comma-separated columns"),
        ("B,u2,5,yesterday", "non-numeric timestamp 'yesterday'"),
        ("", "expected 4 comma-separated columns"),
    ],
    ids=["too-few", "too-many", "timestamp", "blank"],
)
def test_malformed_ratings_line_names_file_and_line(
    tmp_path: Path, bad_line: str, why: str
) -> None:
    raw = tmp_path / "raw"
    write_raw(
        raw, ["A,u1,5,1", "A,u2,4,2", bad_line, "A,u3,3,3"], [{"asin": "A", "title": "T"}], gz=False
    )
    with pytest.raises(ValueError, match=r"Video_Games\.csv:3: " + why):
        convert_amazon2018("Game", raw, tmp_path / "out")
    assert not (tmp_path / "out" / "Game").exists()


def test_malformed_first_ratings_line_is_not_silently_truncated(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_raw(raw, ["A,u1,5,1,oops", "A,u2,4,2"], [{"asin": "A", "title": "T"}], gz=False)
    with pytest.raises(ValueError, match=r"Video_Games\.csv:1: expected 4 .* found 5"):
        convert_amazon2018("Game", raw, tmp_path / "out")


def test_missing_raw_files_raise_file_not_found_naming_the_paths(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        convert_amazon2018("Music", raw, tmp_path / "out")
    message = str(info.value)
    assert str(raw / "Musical_Instruments.csv") in message
    assert str(raw / "meta_Musical_Instruments.json.gz") in message
    assert str(raw / "meta_Musical_Instruments.json") in message
    assert "download_amazon2018" in message

    (raw / "Musical_Instruments.csv").write_text("A,u1,5,1\n", "utf-8")
    with pytest.raises(FileNotFoundError, match="meta_Musical_Instruments") as info:
        convert_amazon2018("Music", raw, tmp_path / "out")
    assert "Musical_Instruments.csv (ratings" not in str(info.value)


def test_write_atomic_files_refuses_titles_with_tabs(tmp_path: Path) -> None:
    inter = pd.DataFrame({"user_id": ["u1"], "item_id": ["A"], "timestamp": [1]})
    items = pd.DataFrame({"item_id": ["A"], "title": ["bad\ttitle"]})
    with pytest.raises(ValueError, match="tab or line break"):
        write_atomic_files(inter, items, tmp_path, "X")
    assert not (tmp_path / "X" / "X.inter").exists()
