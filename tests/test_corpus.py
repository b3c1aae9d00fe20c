"""The CPT corpus: windows, mixing rules, stable merge, candidates, the cached stage, files,
shards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cprec_recbole.data import corpus as corpus_module
from cprec_recbole.data.corpus import (
    DOMAIN_SPECIFIC,
    MIXED,
    corpus_stage,
    load_corpus,
    resolve_cpt_domains,
)
from cprec_recbole.data.corpus_shard import ShardInteractions, mixed_order
from cprec_recbole.data.mixing import (
    g1_and_g2,
    g1_cross_domain_history,
    g2_target_domain_in_history,
    keep_all,
)
from cprec_recbole.data.partition import partition
from cprec_recbole.data.windows import sliding_windows, window_matrix
from cprec_recbole.errors import ConfigError
from cprec_recbole.stages import read_manifest
from tests.conftest import cyclic_sequences, write_dataset

# Timestamps are 1000, 1001... per user and domain, so u1's Alpha and Beta items tie pairwise.
ALPHA = {"u1": ["a1", "a2", "a3", "a4", "a5", "a6"], "u2": ["a7", "a8", "a9"]}
BETA = {"u1": ["b1", "b2"], "u3": ["b3", "b4", "b5", "b6"]}
# Item codes: Alpha a1..a9 -> 0..8, then Beta b1..b6 -> 9..14.
P = -1
EXPECTED_DOMAIN_SPECIFIC = [  # (user, history, target)
    ("u1", [P, 0, 1], 2),
    ("u1", [0, 1, 2], 3),
    ("u1", [1, 2, 3], 4),
    ("u1", [2, 3, 4], 5),
    ("u2", [P, 6, 7], 8),
    ("u3", [P, 11, 12], 13),
    ("u3", [11, 12, 13], 14),
]
# u1 merged, ties in domain order: a1 b1 a2 b2 a3 a4 a5 a6 = 0 9 1 10 2 3 4 5.
EXPECTED_MIXED_ALL = [
    ("u1", [P, 0, 9], 1),
    ("u1", [0, 9, 1], 10),
    ("u1", [9, 1, 10], 2),
    ("u1", [1, 10, 2], 3),
    ("u1", [10, 2, 3], 4),
    ("u1", [2, 3, 4], 5),  # history all Alpha: fails G1
    ("u2", [P, 6, 7], 8),  # single-domain users never pass G1
    ("u3", [P, 11, 12], 13),
    ("u3", [11, 12, 13], 14),
]
EXPECTED_MIXED_G1_G2 = EXPECTED_MIXED_ALL[:5]


def corpus_config(tmp_path, **overrides) -> dict:
    root = tmp_path / "data"
    write_dataset(root, "Alpha", ALPHA)
    write_dataset(root, "Beta", BETA)
    write_dataset(root, "Down", {"u1": ["d1", "d2", "d3"]})
    return {
        "data_path": str(root),
        "output_dir": str(tmp_path / "saved"),
        "dataset": "Down",
        "cpt_domains": None,
        "history_len": 3,
        "min_history": 2,
        "cpt_stride": 1,
        "num_negatives": 2,
        "mixing_rule": "g1_g2",
        "cpt_seed": 7,
        **overrides,
    }


def rows(corpus, phase: int) -> list[tuple]:
    """(user, history, target) of one phase's rows, by user (rows follow user keys, not ids)."""
    got = corpus.rows(corpus.phase_indices(phase))
    found = zip(got.user.tolist(), got.history.tolist(), got.target.tolist(), strict=True)
    return sorted(found, key=lambda row: row[0])  # stable: a user's rows keep their order


# ------------------------------------------------------------------ windows
def test_window_matrix_pads_on_the_left_so_the_latest_item_is_the_last_column():
    sequence, history, target = window_matrix(
        np.array([4, 2, 5]), np.arange(11), history_len=2, min_history=1
    )
    assert sequence.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    assert history.tolist() == [[-1, 0], [0, 1], [1, 2], [-1, 4], [-1, 6], [6, 7], [7, 8], [8, 9]]
    assert target.tolist() == [1, 2, 3, 5, 7, 8, 9, 10]


def test_window_matrix_stride_counts_target_positions_from_each_sequence_end():
    _, _, target = window_matrix(np.array([7]), np.arange(7), 3, min_history=1, stride=2)
    assert target.tolist() == [2, 4, 6]
    _, _, target = window_matrix(np.array([7]), np.arange(7), 3, 1, drop_last=1, stride=2)
    assert target.tolist() == [1, 3, 5]


def test_sliding_windows_with_drop_last_2_keeps_valid_and_test_targets_out():
    sequences = pd.Series(
        {
            "u1": np.array(["i0", "i1", "i2", "i3", "i4", "i5"], dtype=object),
            "u2": np.array(["j0", "j1", "j2"], dtype=object),
        }
    )
    out = sliding_windows(sequences, history_len=2, min_history=2, drop_last=2)
    assert list(out.columns) == ["user_id", "history", "target"]
    assert out["user_id"].tolist() == ["u1", "u1"]
    assert out["target"].tolist() == ["i2", "i3"]  # i4 (valid) and i5 (test) never targets
    assert [h.tolist() for h in out["history"]] == [["i0", "i1"], ["i1", "i2"]]
    assert all(isinstance(h, np.ndarray) for h in out["history"])
    full = sliding_windows(sequences, history_len=10, min_history=1)
    assert full["target"].tolist() == ["i1", "i2", "i3", "i4", "i5", "j1", "j2"]
    assert full["history"].iloc[4].tolist() == ["i0", "i1", "i2", "i3", "i4"]


def test_sliding_windows_last_keeps_only_the_targets_a_model_held_out():
    sequences = pd.Series({"u1": np.arange(7), "u2": np.arange(10, 14), "u3": np.arange(20, 23)})
    out = sliding_windows(sequences, history_len=3, min_history=1, drop_last=2, last=2)
    # u1's last two training items; u2's 11 (10 has no history); u3's one item has no history
    assert out["target"].tolist() == [3, 4, 11]
    rest = sliding_windows(sequences, history_len=3, min_history=1, drop_last=4)
    assert rest["target"].tolist() == [1, 2]  # the others: together, every window once


# ------------------------------------------------------------------ mixing rules
HISTORY_DOMAINS = np.array(
    [
        [-1, -1, 0],  # one domain
        [0, 1, 1],  # two domains
        [-1, 2, 1],  # two domains, padded
        [-1, -1, -1],  # nothing
        [2, 2, 2],  # one domain
    ]
)
TARGET_DOMAIN = np.array([0, 2, 1, 0, 2])


def test_g1_keeps_histories_from_at_least_two_domains():
    assert g1_cross_domain_history(HISTORY_DOMAINS, TARGET_DOMAIN).tolist() == [
        False,
        True,
        True,
        False,
        False,
    ]


def test_g2_keeps_windows_whose_target_domain_occurs_in_the_history():
    assert g2_target_domain_in_history(HISTORY_DOMAINS, TARGET_DOMAIN).tolist() == [
        True,
        False,
        True,
        False,
        True,
    ]


def test_g1_g2_needs_both_and_all_keeps_everything():
    assert g1_and_g2(HISTORY_DOMAINS, TARGET_DOMAIN).tolist() == [False, False, True, False, False]
    assert keep_all(HISTORY_DOMAINS, TARGET_DOMAIN).tolist() == [True] * 5


def test_mixing_rules_are_registered_through_the_public_hook(plugins):
    assert {"g1", "g2", "g1_g2", "all"} <= set(plugins.mixing_rules.names())
    assert plugins.mixing_rules.owners["g1_g2"] == "cprec_recbole.builtin.mixing_rules"


# ------------------------------------------------------------------ merge
def test_merge_is_stable_on_equal_timestamps_domain_order_then_within_domain_order():
    # x, y in domain 0 at times 5, 5 (loaded in that order); z, w in domain 1 at times 5, 4
    def merged(first: int) -> list[str]:
        data = ShardInteractions(
            users=np.array(["u"], dtype=object),
            user_keys=np.zeros(1, np.uint64),
            user=np.zeros(4, np.int64),
            domain=np.array([first, first, 1 - first, 1 - first], np.int16),
            item=np.arange(4, dtype=np.int32),
            timestamp=np.array([5.0, 5.0, 5.0, 4.0]),
            row=np.array([0, 1, 0, 1]),
        )
        return np.array(["x", "y", "z", "w"])[data.item[mixed_order(data)]].tolist()

    assert merged(first=0) == ["w", "x", "y", "z"]
    assert merged(first=1) == ["w", "z", "x", "y"]


def test_equal_item_ids_in_two_domains_stay_two_items(tmp_path):
    inter = pd.DataFrame({"user_id": ["u"], "item_id": ["same"], "timestamp": [1.0]})
    items = pd.DataFrame({"item_id": ["same"], "title": ["T"]})
    sources = [(items, iter([inter])), (items, iter([inter]))]
    part = partition(tmp_path, sources, ["A", "B"], shards=1)
    assert part.items["code"].tolist() == [0, 1] and part.items["domain"].tolist() == [0, 1]
    assert part.read(0).column("item").to_pylist() == [0, 1]
    assert part.interactions == [1, 1]


# ------------------------------------------------------------------ the stage
def test_corpus_holds_exactly_the_expected_domain_specific_and_mixed_samples(tmp_path, plugins):
    folder = corpus_stage(corpus_config(tmp_path), plugins)
    corpus = load_corpus(folder)
    assert corpus.domains == ["Alpha", "Beta"]
    assert rows(corpus, DOMAIN_SPECIFIC) == EXPECTED_DOMAIN_SPECIFIC
    assert rows(corpus, MIXED) == EXPECTED_MIXED_G1_G2
    every = corpus.rows(range(len(corpus)))
    assert (every.domain == corpus.item_domain[every.target]).all()
    assert corpus.titles[9] == "Title of b1" and corpus.item_ids[14] == "b6"
    metrics = read_manifest(folder)["metrics"]
    assert metrics["domain_specific_samples"] == {"Alpha": 5, "Beta": 2}
    assert metrics["mixed_samples"] == 5
    assert metrics["mixed_samples_per_domain"] == {"Alpha": 4, "Beta": 1}
    assert metrics["users"] == {"Alpha": 2, "Beta": 1} and metrics["mixed_users"] == 1
    assert metrics["interactions"] == {"Alpha": 9, "Beta": 6}
    shown = (every.history >= 0).sum() + every.candidates.size
    assert metrics["title_words"]["total"] == 3 * shown  # every title is "Title of xN"


def test_mixing_rule_all_keeps_every_merged_window(tmp_path, plugins):
    corpus = load_corpus(corpus_stage(corpus_config(tmp_path, mixing_rule="all"), plugins))
    assert rows(corpus, MIXED) == EXPECTED_MIXED_ALL


def test_samples_render_codes_without_padding(tmp_path, plugins):
    corpus = load_corpus(corpus_stage(corpus_config(tmp_path), plugins))
    every = corpus.rows(range(len(corpus)))
    u1 = np.flatnonzero(every.user == "u1")
    first, mixed = corpus.samples([u1[0], u1[every.phase[u1] == MIXED][0]])
    assert (first.user_id, first.history, first.target) == ("u1", [0, 1], 2)
    assert (mixed.user_id, mixed.history, mixed.target) == ("u1", [0, 9], 1)
    assert first.target in first.candidates and len(first.candidates) == 3
    assert len(corpus) == 12


def check_candidates(corpus, inter_pairs: set, num_negatives: int) -> None:
    every = corpus.rows(range(len(corpus)))
    for i in range(len(corpus)):
        candidates = every.candidates[i].tolist()
        target, user = int(every.target[i]), every.user[i]
        assert len(candidates) == num_negatives + 1 == len(set(candidates))
        assert candidates.count(target) == 1
        assert all(corpus.item_domain[c] == every.domain[i] for c in candidates)
        negatives = [c for c in candidates if c != target]
        assert not any((user, c) in inter_pairs for c in negatives)


def test_negatives_come_from_the_target_domain_and_never_from_the_users_items(tmp_path, plugins):
    config = corpus_config(tmp_path)
    corpus = load_corpus(corpus_stage(config, plugins))
    codes = {item: code for code, item in enumerate(corpus.item_ids)}
    pairs = {(u, codes[i]) for seqs in (ALPHA, BETA) for u, items in seqs.items() for i in items}
    check_candidates(corpus, pairs, 2)

    # A larger fixture with overlapping users: the same holds, and the target's slot varies.
    root = tmp_path / "big"
    alpha = cyclic_sequences(n_users=40, n_items=30, length=9, seed=1)
    beta = {u: [f"b{i}" for i in items] for u, items in cyclic_sequences(40, 30, 7, 2).items()}
    write_dataset(root, "A", alpha)
    write_dataset(root, "B", beta)
    config = {**config, "data_path": str(root), "cpt_domains": ["A", "B"], "num_negatives": 5}
    corpus = load_corpus(corpus_stage({**config, "history_len": 4}, plugins))
    codes = {(d, item): c for c, (d, item) in enumerate(zip(corpus.item_domain, corpus.item_ids))}
    pairs = {(u, codes[0, i]) for u, items in alpha.items() for i in items}
    pairs |= {(u, codes[1, i]) for u, items in beta.items() for i in items}
    check_candidates(corpus, pairs, 5)
    assert (corpus.phase == MIXED).sum() > 0
    every = corpus.rows(range(len(corpus)))
    slots = (every.candidates == every.target[:, None]).argmax(axis=1)
    assert len(np.unique(slots)) == 6


def test_corpus_stage_is_reused_and_rebuilt_when_a_file_changes(tmp_path, plugins, monkeypatch):
    config = corpus_config(tmp_path)
    first = corpus_stage(config, plugins)

    def no_build(*args, **kwargs):
        raise AssertionError("a cached corpus was rebuilt")

    with monkeypatch.context() as patch:
        patch.setattr(corpus_module, "build_corpus", no_build)
        assert corpus_stage(config, plugins) == first
    beta_inter = tmp_path / "data" / "Beta" / "Beta.inter"
    beta_inter.write_text(beta_inter.read_text() + "u3\tb6\t2000\n")
    second = corpus_stage(config, plugins)
    assert second != first
    assert read_manifest(second)["metrics"]["interactions"] == {"Alpha": 9, "Beta": 7}


# ------------------------------------------------------------------ which domains
def test_default_cpt_domains_are_every_dataset_but_the_downstream_one(tmp_path, plugins):
    config = corpus_config(tmp_path)
    assert resolve_cpt_domains(config, plugins) == ["Alpha", "Beta"]
    assert resolve_cpt_domains({**config, "domain": "Alpha"}, plugins) == ["Beta", "Down"]
    chosen = {**config, "cpt_domains": ["Beta"]}
    assert resolve_cpt_domains(chosen, plugins) == ["Beta"]


def test_cpt_domains_holding_the_downstream_domain_or_nothing_is_a_clear_error(tmp_path, plugins):
    config = corpus_config(tmp_path)
    with pytest.raises(ConfigError, match="downstream domain 'Down'"):
        resolve_cpt_domains({**config, "cpt_domains": ["Alpha", "Down"]}, plugins)
    with pytest.raises(ConfigError, match="empty list"):
        resolve_cpt_domains({**config, "cpt_domains": []}, plugins)
    only = tmp_path / "only"
    write_dataset(only, "Down", {"u1": ["d1", "d2", "d3"]})
    with pytest.raises(ConfigError, match="found none"):
        resolve_cpt_domains({**config, "data_path": str(only)}, plugins)


def test_unknown_mixing_rule_fails_before_loading(tmp_path, plugins):
    with pytest.raises(KeyError, match="g1_g2"):
        corpus_stage(corpus_config(tmp_path, mixing_rule="g1g2"), plugins)


def test_corpus_benchmark_reports_counts_time_and_memory(tmp_path):
    import importlib.util
    import json

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("bench_corpus", REPO / "benchmarks" / "corpus.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = corpus_config(tmp_path)
    args = [
        f"--data_path={config['data_path']}",
        "--domains=Alpha,Beta",
        "--dataset=Down",
        "--history_len=3",
        "--min_history=2",
        "--num_negatives=2",
        f"--results_dir={tmp_path / 'results'}",
    ]
    out = bench.main(args)
    assert (out["domain_specific_samples"], out["mixed_samples"]) == (7, 5)
    assert out["samples"] == 12 and out["wall_s"] > 0 and out["peak_rss_mib"] > 0
    assert json.loads((tmp_path / "results" / "corpus.json").read_text()) == out
    assert (out["interactions"], out["replicate"]) == (15, 1)
    twice = bench.main([*args, "--replicate=2", "--corpus_shards=3"])  # every user twice
    assert (twice["samples"], twice["interactions"], twice["shards"]) == (24, 30, 3)
    assert json.loads((tmp_path / "results" / "corpus-2x.json").read_text()) == twice
