"""The ID-model pipeline end to end through the real RecBole: train, checkpoint, reload, score."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from recbole.data import create_dataset

from cprec_recbole.cli import main
from cprec_recbole.command import build_config
from cprec_recbole.compat import load_checkpoint
from cprec_recbole.data.prepare import prepare
from cprec_recbole.quick_start import run
from cprec_recbole.rec_model import recbole_config, train_split
from cprec_recbole.trainer import CandidateEvalData, CandidateTrainer
from tests.conftest import REPO, TINY_SIZES, cyclic_sequences, write_dataset
from tests.reported_metrics import assert_metrics_follow_from_ranks


def test_sasrec_checkpoint_reloads_from_disk_and_reproduces_its_test_metrics(
    tiny_overrides, plugins, caplog
):
    caplog.set_level("INFO")
    results = run("SASRec", "Tiny", overrides=tiny_overrides)
    folder = Path(results["folder"])
    config = build_config("SASRec", "Tiny", plugins, overrides=tiny_overrides)
    assert caplog.text.count("config of this run:") == 1 and "\nhidden_size: 16\n" in caplog.text
    manifests = [folder / "manifest.json", *Path(config["output_dir"]).glob("data/*/manifest.json")]
    for manifest in manifests:  # every stage keeps the config of the run that built it
        built = json.loads(manifest.read_text())
        assert built["run_config"] == config
        # ... and what its numbers depend on beyond the config: package versions, the CPU's ISA
        assert {"torch", "transformers", "peft", "accelerate", "tokenizers"} <= set(
            built["versions"]
        )
        assert built["machine"]["cpu"] and built["machine"]["aten_cpu_capability"]
    data = prepare(config, plugins)
    model_cls = plugins.models.get("SASRec")
    rb_config = recbole_config(model_cls, config, data, folder / "reload")
    dataset = create_dataset(rb_config)
    fresh = model_cls(rb_config, dataset)
    trainer = CandidateTrainer(rb_config, fresh, folder / "reload", config["sparsity_buckets"])
    test = CandidateEvalData.build(data.eval_rows("test"), dataset, config["history_len"])
    reloaded = trainer.evaluate(test, load_best_model=True, model_file=folder / "model.pth")
    assert reloaded == results["test"]
    assert "state_dict" in load_checkpoint(folder / "model.pth")
    assert results["epochs"] == 2 and results["eval_time_s"] >= 0  # the cost report's columns


@pytest.mark.parametrize("holdout", [0, 1])
def test_recbole_trains_on_no_valid_or_test_item_nor_the_held_out_ones(tmp_path, plugins, holdout):
    # users of 3 to 6 items: RecBole's leave-one-out alone trains on a 3-item user's valid item
    sequences = {f"u{u:02d}": [f"i{(u + 7 * t) % 30}" for t in range(3 + u % 4)] for u in range(60)}
    root = write_dataset(tmp_path / "data", "Short", sequences)
    overrides = {"data_path": str(root), "output_dir": str(tmp_path / "saved")}
    config = build_config(
        "SASRec", "Short", plugins, overrides={**overrides, "train_holdout": holdout}
    )
    data = prepare(config, plugins)
    rb_config = recbole_config(plugins.models.get("SASRec"), config, data, tmp_path / "model")
    dataset = create_dataset(rb_config)
    train = train_split(rb_config, dataset)._dataset.inter_feat
    users = dataset.id2token(dataset.uid_field, train[dataset.uid_field].numpy())
    trained = sorted(zip(users, train["item_length"].tolist()))  # (user, target position)
    windows = [
        (u, p) for u, seq in data.sequences.items() for p in range(1, len(seq) - 2 - holdout)
    ]
    assert len(data.sequences) == 60 and trained == sorted(windows)


def test_sasrec_learns_a_sequential_pattern_far_above_random(tiny_overrides):
    results = run("SASRec", "Tiny", overrides={**tiny_overrides, "epochs": 30})
    assert results["test"]["hr@1"] > 0.5  # random is 1/20


@pytest.mark.parametrize("model", ["GRU4Rec", "CL4SRec"])
def test_every_baseline_runs_and_reports_all_metrics(model, tiny_base):
    results = run(model, "Tiny", overrides={**tiny_base, **TINY_SIZES[model]})
    ranks = assert_metrics_follow_from_ranks(results)["rank"]
    assert results["test"]["users"] == 60 and ranks.between(0, 19).all()  # 20 candidates each
    assert (Path(results["folder"]) / "results.csv").read_text().startswith("model,dataset")


def test_finished_stages_are_reused_and_force_redoes_one(tiny_overrides, caplog):
    first = run("SASRec", "Tiny", overrides=tiny_overrides)
    manifest = Path(first["folder"]) / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    caplog.set_level("INFO")
    again = run("SASRec", "Tiny", overrides=tiny_overrides)
    assert again["test"] == first["test"] and manifest.stat().st_mtime_ns == stamp
    assert "stage rec_model: reusing" in caplog.text
    run("SASRec", "Tiny", overrides=tiny_overrides, force=["rec_model"])
    assert manifest.stat().st_mtime_ns != stamp
    assert json.loads(manifest.read_text())["metrics"]["test"]["users"] == 60


def test_a_stage_killed_midway_has_no_manifest_and_is_redone(tiny_overrides):
    first = run("SASRec", "Tiny", overrides=tiny_overrides)
    folder = Path(first["folder"])
    (folder / "manifest.json").unlink()  # as if killed before the manifest was written
    again = run("SASRec", "Tiny", overrides=tiny_overrides)
    assert again["folder"] == first["folder"] and (folder / "manifest.json").is_file()


def test_cli_trains_and_writes_results_outside_the_working_directory(tiny_overrides, tmp_path):
    args = [f"--{k}={v}" for k, v in tiny_overrides.items()]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["--model=SASRec", "--dataset=Tiny", *args]) == 0
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "log").exists() and not (tmp_path / "log_tensorboard").exists()
    assert list(Path(tiny_overrides["output_dir"]).glob("rec_model/*/results.json"))


def test_cli_help_lists_models_datasets_and_plugins(capsys, tiny_data):
    assert main(["--help", f"--data_path={tiny_data}"]) == 0
    out = capsys.readouterr().out
    assert "CL4SRec" in out and "SASRec" in out and "Game-full" in out and "Tiny" in out
    assert "cprec_recbole.builtin.recbole_models" in out


def test_cli_reports_an_unknown_model_with_suggestions(capsys, tiny_overrides):
    assert main(["--model=SASrec", "--dataset=Tiny"]) == 2
    assert "Did you mean: SASRec" in capsys.readouterr().err


def test_example_plugin_adds_a_csv_domain_the_cli_trains_sasrec_on(tmp_path, tiny_overrides):
    folder = tmp_path / "csvdata" / "ShopCSV"
    folder.mkdir(parents=True)
    seqs = cyclic_sequences(40, 30, 6)
    rows = [f"{u},{i},{t}" for u, items in seqs.items() for t, i in enumerate(items)]
    (folder / "interactions.csv").write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    titles = [f'{i},"Game {i}, deluxe"' for i in sorted({i for s in seqs.values() for i in s})]
    (folder / "items.csv").write_text("item,title\n" + "\n".join(titles) + "\n")
    overrides = {**tiny_overrides, "data_path": str(tmp_path / "csvdata")}
    args = [f"--{k}={v}" for k, v in overrides.items()]
    plugin = f"--plugin={REPO / 'plugins' / 'csv_domain.py'}"
    assert main(["--model=SASRec", "--dataset=ShopCSV", plugin, *args]) == 0
    (result,) = Path(overrides["output_dir"]).glob("rec_model/*/results.json")
    assert json.loads(result.read_text())["test"]["users"] == 40
