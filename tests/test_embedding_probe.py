"""The item-embedding probe: what SASRec's embeddings know about each split's targets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cprec_recbole.embedding_probe import decayed_query, probe, probe_hits, split_pairs


def test_the_query_weights_the_last_items_most():
    embeddings = np.eye(4)
    query = decayed_query(embeddings, np.array([1, 2, 3]))
    np.testing.assert_allclose(query, [0, 0.36, 0.6, 1.0])


def test_the_target_beats_negatives_drawn_outside_padding_history_and_target():
    embeddings = np.eye(8)
    rows = pd.DataFrame({"history": [np.array([1, 2])], "target": [2]})  # target = last item
    hits = probe_hits(embeddings, rows, 3, np.random.default_rng(0))
    assert hits.tolist() == [True]
    rows = pd.DataFrame({"history": [np.array([1, 2])], "target": [5]})  # orthogonal: ties
    assert probe_hits(embeddings, rows, 3, np.random.default_rng(0)).tolist() == [False]
    with pytest.raises(ValueError, match="8 embedding rows leave no 5 negatives"):
        probe_hits(embeddings, rows, 5, np.random.default_rng(0))


def test_splits_hold_out_the_valid_and_test_targets_from_the_windows():
    sequences = pd.Series({"u": np.array(["a", "b", "c", "d", "e", "f"])})
    pairs = split_pairs(sequences, history_len=10, min_history=3)
    assert pairs["train windows"]["target"].tolist() == ["d"]
    assert pairs["valid"]["target"].tolist() == ["e"] and pairs["test"]["target"].tolist() == ["f"]
    pairs = split_pairs(pd.Series({"u": np.array([*"abcdefg"])}), 10, 3, holdout=1)
    assert pairs["train windows"]["target"].tolist() == ["d"]
    assert pairs["held-out windows"]["target"].tolist() == ["e"]  # what SASRec did not train on


def test_embeddings_fit_to_the_training_transitions_know_them_better_than_test(tmp_path):
    # each item's row points at its successor in training ("a b c d" -> row(x) ~ row(next)),
    # the test targets are unrelated: the probe must tell the splits apart.
    tokens = ["[PAD]", *"abcdefghijkl"]
    embeddings = torch.zeros(len(tokens), 16)
    for row in range(1, len(tokens)):
        embeddings[row, row % 16] = 1.0
    for a, b in [("a", "b"), ("b", "c"), ("c", "d")]:
        embeddings[tokens.index(b)] += embeddings[tokens.index(a)]
    torch.save({"state_dict": {"item_embedding.weight": embeddings}}, tmp_path / "model.pth")
    (tmp_path / "item_tokens.txt").write_text("\n".join(tokens))
    (tmp_path / "manifest.json").write_text(
        json.dumps({"config": {"model": "SASRec", "train_holdout": 0}})
    )
    sequences = pd.Series({f"u{k}": np.array([*"abcd", "k", "l"]) for k in range(4)})
    table = probe(sequences, tmp_path, history_len=10, min_history=3, limit=10, negatives=5)
    table = table.set_index("split")
    assert table.loc["train windows", "hr@1"] == 1.0 and table.loc["test", "hr@1"] == 0.0
    assert table["rows"].tolist() == [4, 4, 4]
