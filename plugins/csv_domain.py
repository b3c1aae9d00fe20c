"""Example plugin: a new domain from two plain CSV files, with no change to the package.

Copy this file, rename ``NAME`` and the file names, and run
``python run_recbole_llm.py --plugin=plugins/csv_domain.py --model=SASRec --dataset=ShopCSV``.
It reads ``<data_path>/ShopCSV/interactions.csv`` (columns ``user,item,timestamp``) and
``<data_path>/ShopCSV/items.csv`` (columns ``item,title``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cprec_recbole import hookimpl
from cprec_recbole.data.domain import files_fingerprint, finish_domain
from cprec_recbole.errors import DataError

NAME = "ShopCSV"


@dataclass(frozen=True)
class CsvDomain:
    name: str

    def paths(self, config: dict) -> tuple[Path, Path]:
        folder = Path(config["data_path"]) / self.name
        return folder / "interactions.csv", folder / "items.csv"

    def fingerprint(self, config: dict) -> list:
        return files_fingerprint(self.paths(config))

    def load(self, config: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
        inter_path, items_path = self.paths(config)
        for path in (inter_path, items_path):
            if not path.is_file():
                raise DataError(f"{path} is missing: the {self.name} domain needs it")
        inter = pd.read_csv(inter_path, dtype={"user": str, "item": str})
        items = pd.read_csv(items_path, dtype=str, keep_default_na=False)
        inter = inter.rename(columns={"user": "user_id", "item": "item_id"})
        items = items.rename(columns={"item": "item_id"})
        inter["timestamp"] = pd.to_numeric(inter["timestamp"], errors="raise").astype(float)
        return finish_domain(inter[["user_id", "item_id", "timestamp"]], items, str(items_path))


@hookimpl
def register_domains(register):
    register(NAME, CsvDomain(NAME))
