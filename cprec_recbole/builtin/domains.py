"""Built-in domains: the paper's Amazon-2018 categories, converted from the raw files on demand.

Any other dataset name is read as atomic files from ``<data_path>/<name>/`` without registration.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cprec_recbole.data.amazon import (
    AMAZON2018_CATEGORIES,
    convert_amazon2018,
    download_amazon2018,
)
from cprec_recbole.data.domain import AtomicFileDomain
from cprec_recbole.errors import DataError
from cprec_recbole.hookspecs import hookimpl


@dataclass(frozen=True)
class Amazon2018Domain:
    """Atomic files under ``data_path`` if there; else converted from ``<data_path>/raw/``
    (downloaded first when ``download: true``)."""

    name: str

    def _ensure_files(self, config: dict) -> AtomicFileDomain:
        atomic = AtomicFileDomain(self.name)
        data_path = Path(config["data_path"])
        if not atomic.exists(data_path):
            raw = data_path / "raw"
            if config.get("download"):
                raw.mkdir(parents=True, exist_ok=True)
                download_amazon2018(self.name, raw)
            try:
                convert_amazon2018(self.name, raw, data_path)
            except FileNotFoundError as exc:
                raise DataError(
                    f"dataset {self.name!r} not found: looked for {atomic.paths(data_path)[0]}. "
                    f"Point --data_path=FOLDER at a folder holding {self.name}/{self.name}.inter "
                    f"and .item (e.g. --data_path=../shared/data), or pass --download=true to "
                    f"fetch the Amazon-2018 raw files. ({exc})"
                ) from None
        return atomic

    def fingerprint(self, config: dict) -> list:
        return self._ensure_files(config).fingerprint(config)

    def load(self, config: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
        return self._ensure_files(config).load(config)

    def load_chunks(self, config: dict) -> tuple[pd.DataFrame, Iterator[pd.DataFrame]]:
        return self._ensure_files(config).load_chunks(config)


@hookimpl
def register_domains(register):
    for name in AMAZON2018_CATEGORIES:
        register(name, Amazon2018Domain(name))
