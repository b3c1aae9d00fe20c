"""Item titles: cleaning shared by every domain loader, and making them distinct for prompts."""

from __future__ import annotations

import html
from collections.abc import Hashable, Mapping
from typing import TypeVar

import pandas as pd

K = TypeVar("K", bound=Hashable)

_CONTROL = r"[\x00-\x1f\x7f-\x9f]"
_INVISIBLE = r"[\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]"


def clean_titles(titles: pd.Series) -> pd.Series:
    """Unescape HTML entities (twice, for double-escaped ones), drop control and invisible
    characters, collapse whitespace (tabs and newlines included) and trim."""
    text = titles.fillna("").astype(str)
    text = text.map(html.unescape).map(html.unescape)
    text = text.str.replace(_INVISIBLE, "", regex=True)
    text = text.str.replace(_CONTROL, " ", regex=True)
    return text.str.replace(r"\s+", " ", regex=True).str.strip()


def drop_untitled(items: pd.DataFrame, logger=None) -> pd.DataFrame:
    """Drop items whose cleaned title is empty, logging how many went."""
    keep = items["title"].str.len() > 0
    dropped = int((~keep).sum())
    if dropped and logger is not None:
        logger.warning("dropped %d item(s) with no title", dropped)
    return items[keep].reset_index(drop=True)


def distinct_titles(titles: Mapping[K, str]) -> dict[K, str]:
    """Number the titles several items share: each of them gets " (1)", " (2)"... in mapping
    order. Without it a model can neither tell two such candidates apart in a prompt nor name one
    in an answer (cut to 8 tokens, 20% of Game's items share a title). Titles are compared
    lower-cased, as answers are matched; every member is numbered, so no title of a group is a
    substring of another (LLaRA's answer rule matches substrings)."""
    out = pd.Series(list(titles.values()), index=list(titles), dtype=object)
    while True:
        key = out.str.lower()
        shared = key.duplicated(keep=False)
        if not shared.any():
            return out.to_dict()
        number = key.groupby(key).cumcount() + 1
        out = out.where(~shared, out + " (" + number.astype(str) + ")")
