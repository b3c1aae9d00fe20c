"""Item-title cleaning shared by every domain loader and converter."""

from __future__ import annotations

import html

import pandas as pd

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
