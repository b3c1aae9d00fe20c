"""Shared fixtures: tiny datasets written as real files, in the formats users provide."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cprec_recbole.plugins import LOAD_PLUGINS_ENV, load_plugins

os.environ[LOAD_PLUGINS_ENV] = ""  # installed packages' plugins never change what tests see
# One Ray auth mode for every Ray of the session (Ray reads it once per process; unset, a local
# ray.init turns token mode on for this process only, and a later `ray start` head's clients fail)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float"
ITEM_HEADER = "item_id:token\ttitle:token_seq"


def write_dataset(root: Path, name: str, sequences: dict[str, list[str]], titles=None) -> Path:
    """Write ``<root>/<name>/<name>.inter|.item`` from user -> chronological items."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = [INTER_HEADER]
    for user, items in sequences.items():
        lines += [f"{user}\t{item}\t{1000 + t}" for t, item in enumerate(items)]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    items = sorted({i for seq in sequences.values() for i in seq})
    titles = titles or {i: f"Title of {i}" for i in items}
    body = [ITEM_HEADER] + [f"{i}\t{titles[i]}" for i in items]
    (folder / f"{name}.item").write_text("\n".join(body) + "\n")
    return root


def cyclic_sequences(n_users: int = 60, n_items: int = 30, length: int = 8, seed: int = 0):
    """Each user walks items i, i+1, i+2... (mod n_items): a pattern a sequential model learns."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_items, n_users)
    return {
        f"u{u:03d}": [f"i{(s + t) % n_items:02d}" for t in range(length)]
        for u, s in enumerate(starts)
    }


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """A data_path holding the learnable ``Tiny`` dataset."""
    return write_dataset(tmp_path / "data", "Tiny", cyclic_sequences())


#: Tiny sizes for each ID model, in the keys that model reads (an unknown key is an error).
TINY_SIZES = {
    "SASRec": {"hidden_size": 16, "inner_size": 32, "n_layers": 1},
    "GRU4Rec": {"embedding_size": 16, "hidden_size": 16},
}
TINY_SIZES["CL4SRec"] = TINY_SIZES["SASRec"]


@pytest.fixture
def tiny_base(tiny_data: Path, tmp_path: Path) -> dict:
    """Config overrides every model reads for a fast run on ``Tiny``, written under tmp_path."""
    return {
        "data_path": str(tiny_data),
        "output_dir": str(tmp_path / "saved"),
        "epochs": 2,
        "show_progress": False,
        "train_batch_size": 64,
    }


@pytest.fixture
def tiny_sft(tiny_base: dict) -> dict:
    """A fast LLM run on ``Tiny``: the tiny-random backbone, one short SFT epoch, few users."""
    return {
        **tiny_base,
        "llm_backbone": "tiny-random",
        "sft_samples": 32,
        "valid_users": 8,
        "eval_users": 12,
        "epochs": 1,
        "micro_batch_size": 8,
        "train_batch_size": 8,
    }


@pytest.fixture
def tiny_overrides(tiny_base: dict) -> dict:
    """A fast SASRec on ``Tiny``."""
    return {**tiny_base, **TINY_SIZES["SASRec"]}


@pytest.fixture(scope="session")
def plugins():
    return load_plugins()
