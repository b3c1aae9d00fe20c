"""The corpus built in user shards: the same corpus for any shard count or executor, read back
lazily; per-user draws; a missing shard is bad input."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml

from cprec_recbole.cli import main
from cprec_recbole.command import build_config
from cprec_recbole.data import corpus as corpus_module
from cprec_recbole.data.corpus import Rows, corpus_stage, load_corpus
from cprec_recbole.errors import ConfigError, DataError
from cprec_recbole.llm.cpt import cpt_plan, sample_lengths, variant_order
from cprec_recbole.stages import read_manifest
from tests.conftest import cyclic_sequences, write_dataset

DOMAINS = ("Books", "Games", "Tools")


def shard_config(tmp_path: Path, **overrides) -> dict:
    """Three CPT domains whose users overlap in part (so mixed windows exist) and a downstream."""
    root = tmp_path / "data"
    if not root.is_dir():
        for index, name in enumerate(DOMAINS):
            walks = cyclic_sequences(n_users=60, n_items=25, length=6 + index, seed=index)
            users = list(walks)[index * 10 :]  # users u000..u009 in Books only, and so on
            write_dataset(root, name, {u: [f"{name}{i}" for i in walks[u]] for u in users})
        write_dataset(root, "Down", {"u1": ["d1", "d2", "d3"]})
    return {
        "data_path": str(root),
        "output_dir": str(tmp_path / "saved"),
        "dataset": "Down",
        "cpt_domains": list(DOMAINS),
        "history_len": 4,
        "min_history": 2,
        "cpt_stride": 1,
        "num_negatives": 5,
        "mixing_rule": "g1_g2",
        "cpt_seed": 11,
        **overrides,
    }


def every_row(corpus) -> Rows:
    return corpus.rows(np.arange(len(corpus)))


def assert_same_rows(a: Rows, b: Rows) -> None:
    for field in fields(Rows):
        assert np.array_equal(getattr(a, field.name), getattr(b, field.name)), field.name


def built(config: dict, plugins, name: str, shards: int):
    """Build into its own output folder (the shard count is not in the stage hash)."""
    folder = Path(config["output_dir"]).parent / name
    return corpus_stage({**config, "output_dir": str(folder), "corpus_shards": shards}, plugins)


def test_a_one_shard_and_an_eight_shard_build_are_the_same_corpus(tmp_path, plugins):
    config = shard_config(tmp_path)
    one, eight = built(config, plugins, "one", 1), built(config, plugins, "eight", 8)
    assert one.name == eight.name  # same stage hash: the shard count is in `uses`
    files = sorted(p.name for p in (eight / "samples").iterdir())
    assert files == [f"shard-{s:05d}-of-00008.parquet" for s in range(8)]
    a, b = load_corpus(one), load_corpus(eight)
    assert (b.counts.sum(axis=1) > 0).sum() >= 4  # users really spread over the shards
    assert len(a) == len(b) and (a.phase == 1).sum() > 0
    assert_same_rows(every_row(a), every_row(b))
    assert a.titles == b.titles and np.array_equal(a.item_domain, b.item_domain)
    drop = ("shards", "build_seconds")
    metrics = [
        {k: v for k, v in read_manifest(f)["metrics"].items() if k not in drop}
        for f in (one, eight)
    ]
    assert metrics[0] == metrics[1]

    # The CPT plan (phase order, lengths, micro-batches) comes out the same from either.
    tokens = np.arange(len(a.titles)) % 7 + 1
    plans = []
    for corpus in (a, b):
        order, phases = variant_order(corpus.phase, "DS+Mix(A)", seed=3, warmup_ratio=0.1)
        lengths = sample_lengths(corpus, tokens, 12)
        plans.append((order.tolist(), cpt_plan(order, phases, lengths, 4, 2, seed=3)[0].steps))
    assert plans[0] == plans[1]


def test_rows_read_by_index_match_a_pass_over_the_shards(tmp_path, plugins, monkeypatch):
    monkeypatch.setattr(corpus_module, "ROW_GROUP", 7)  # many row groups per shard
    corpus = load_corpus(built(shard_config(tmp_path), plugins, "three", 3))
    whole = [None] * len(corpus)
    for at, rows in corpus.chunks():
        for position, index in enumerate(at.tolist()):
            whole[index] = rows.take(np.array([position]))
    assert all(part is not None for part in whole)
    order = np.random.default_rng(0).permutation(len(corpus))
    assert_same_rows(corpus.rows(order), Rows.concat([whole[i] for i in order]))
    sample = corpus.samples([order[0]])[0]
    assert sample.user_id == whole[order[0]].user[0] and sample.target == whole[order[0]].target[0]
    with pytest.raises(IndexError, match="corpus rows are 0.."):
        corpus.rows([len(corpus)])


def test_a_users_samples_do_not_depend_on_the_other_users(tmp_path, plugins):
    config = shard_config(tmp_path, corpus_shards=4)
    before = every_row(load_corpus(corpus_stage(config, plugins)))
    books = Path(config["data_path"]) / "Books" / "Books.inter"
    books.write_text(
        books.read_text() + "".join(f"newcomer\tBooksi{i:02d}\t{900 + i}\n" for i in range(6))
    )
    after = every_row(load_corpus(corpus_stage(config, plugins)))
    assert (after.user == "newcomer").sum() > 0
    assert_same_rows(before, after.take(np.flatnonzero(after.user != "newcomer")))


def test_corpus_shards_must_be_a_positive_integer(tmp_path, plugins):
    for bad in (0, -2, 1.5):
        with pytest.raises(ConfigError, match=f"corpus_shards must be an integer >= 1, got {bad}"):
            corpus_stage(shard_config(tmp_path, corpus_shards=bad), plugins)


def test_corpus_shards_as_ray_tasks_give_the_same_corpus(tmp_path, plugins):
    ray = pytest.importorskip("ray")
    config = shard_config(tmp_path)
    here = every_row(load_corpus(built(config, plugins, "here", 3)))
    ray.shutdown()  # a Ray an earlier test's search joined in this process (a no-op if none)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = built({**config, "ray_address": "auto"}, plugins, "ray", 3)
    finally:
        ray.shutdown()
    assert_same_rows(here, every_row(load_corpus(remote)))


# ------------------------------------------------------------------ a missing shard
def test_a_missing_shard_is_named_when_the_corpus_is_read(tmp_path, plugins):
    folder = corpus_stage(shard_config(tmp_path, corpus_shards=4), plugins)
    (folder / "samples" / "shard-00002-of-00004.parquet").unlink()
    with pytest.raises(
        DataError,
        match=r"shard-00002-of-00004\.parquet: a shard of the corpus is missing .*--force=corpus",
    ):
        load_corpus(folder)


def test_a_missing_shard_ends_a_cprec_run_with_one_line_and_writes_nothing(
    tmp_path, plugins, capsys
):
    root = tmp_path / "data"
    write_dataset(root, "Tiny", cyclic_sequences())
    for name in ("ShopA", "ShopB"):
        walks = {f"s{u}": [f"{name}{(u + t) % 30}" for t in range(7)] for u in range(24)}
        write_dataset(root, name, walks)
    settings = {
        "data_path": str(root),
        "output_dir": str(tmp_path / "saved"),
        "llm_backbone": "tiny-random",
        "show_progress": False,
        "corpus_shards": 4,
        "rec_model_overrides": {"epochs": 1, "hidden_size": 16, "inner_size": 32, "n_layers": 1},
    }
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    config = build_config("CPRec", "Tiny", plugins, [str(config_file)], {})
    folder = corpus_stage(config, plugins)
    (folder / "samples" / "shard-00001-of-00004.parquet").unlink()
    kept = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    capsys.readouterr()
    assert main(["--model=CPRec", "--dataset=Tiny", f"--config_files={config_file}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: stage corpus: the cached ")
    assert "samples/shard-00001-of-00004.parquet is missing" in last and "--force=corpus" in last
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == kept
    assert not (tmp_path / "saved" / "cpt").exists()
