"""The data stage with a plugin domain: chronological order and a stage key stable across runs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd
import pytest

from cprec_recbole.command import build_config
from cprec_recbole.data.prepare import prepare
from cprec_recbole.plugins import load_plugins
from tests.conftest import cyclic_sequences

# A plain class (no dataclass repr, no fingerprint) that returns its CSV rows in file order.
ROWS_AS_GIVEN = """
from pathlib import Path

import pandas as pd

from cprec_recbole import hookimpl


class RowsAsGiven:
    def load(self, config):
        folder = Path(config["data_path"])
        inter = pd.read_csv(folder / "inter.csv", dtype={"user_id": str, "item_id": str})
        items = pd.read_csv(folder / "items.csv", dtype=str, keep_default_na=False)
        return inter, items


@hookimpl
def register_domains(register):
    register("Given", RowsAsGiven())
"""


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "rows_as_given.py"
    path.write_text(ROWS_AS_GIVEN)
    return path


@pytest.fixture
def given(tmp_path, plugin_file):
    """Prepare the ``Given`` domain from interaction rows (in its own data and output folders
    unless ``output`` is shared)."""
    calls = itertools.count()

    def run(inter: pd.DataFrame, output: Path | None = None, plugins=None):
        data = tmp_path / f"data{next(calls)}"
        data.mkdir()
        inter.to_csv(data / "inter.csv", index=False)
        items = pd.DataFrame({"item_id": sorted(set(inter["item_id"]))})
        items.assign(title="Title of " + items["item_id"]).to_csv(data / "items.csv", index=False)
        plugins = plugins or load_plugins([plugin_file])
        overrides = {"data_path": str(data), "output_dir": str(output or data / "out")}
        return prepare(build_config("SASRec", "Given", plugins, overrides=overrides), plugins)

    return run


def chronological_rows(n_users: int = 30) -> pd.DataFrame:
    """user_id, item_id, timestamp sorted by user then time; each user's times are distinct."""
    rows = [
        (user, item, 100 * t + u)
        for u, (user, items) in enumerate(cyclic_sequences(n_users, 40, 7).items())
        for t, item in enumerate(items)
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def split_rows(data, split: str) -> list[tuple]:
    rows = data.eval_rows(split)
    return [(r.user_id, list(r.history), r.target, list(r.candidates)) for r in rows.itertuples()]


def test_a_domain_returning_shuffled_rows_gets_the_splits_of_its_sorted_rows(given):
    ordered = chronological_rows()
    shuffled = ordered.sample(frac=1.0, random_state=0).reset_index(drop=True)
    assert not shuffled.equals(ordered)
    expected, got = given(ordered), given(shuffled)
    for split in ("valid", "test"):
        assert split_rows(got, split) == split_rows(expected, split)
    pd.testing.assert_frame_equal(got.inter, expected.inter)
    assert got.candidate_digests() == expected.candidate_digests()


def test_equal_timestamps_keep_the_order_the_domain_gave_them(given):
    ordered = chronological_rows()
    first = ordered["user_id"].iloc[0]
    # The first user's items come out of time order; i02, i03, i04 share one timestamp.
    mine = pd.DataFrame(
        {
            "user_id": first,
            "item_id": ["i00", "i01", "i02", "i03", "i04", "i05", "i06"],
            "timestamp": [9, 1, 5, 5, 5, 2, 8],
        }
    )
    rows = pd.concat([ordered[ordered["user_id"] != first], mine], ignore_index=True)
    data = given(rows)
    sequence = list(data.sequences[first])
    assert sequence == ["i01", "i05", "i02", "i03", "i04", "i06", "i00"]
    test = data.eval_rows("test").set_index("user_id").loc[first]
    assert test["target"] == "i00" and list(test["history"]) == sequence[:-1]


def test_a_plain_class_domain_has_one_data_stage_across_instances_and_no_memory_address(
    given, plugin_file, tmp_path
):
    """A default repr (``<RowsAsGiven object at 0x7f...>``) differs per process: no reuse ever."""
    rows, output = chronological_rows(), tmp_path / "shared_out"
    first = given(rows, output, load_plugins([plugin_file]))
    second = given(rows, output, load_plugins([plugin_file]))  # another instance, same class
    assert second.folder == first.folder
    keys = json.loads((first.folder / "manifest.json").read_text())["config"]
    assert "RowsAsGiven" in json.dumps(keys["source"]) and "0x" not in json.dumps(keys)
