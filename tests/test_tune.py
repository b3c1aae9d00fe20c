"""Ray Tune search: grid, selection on valid metrics, shared stages, one test evaluation; on a
Ray cluster (``ray start --head`` on this machine, shared by the module), resumed after an
interruption; a missing Ray or an address where nothing answers stops the command first."""

from __future__ import annotations

import json
import logging
import operator
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from cprec_recbole.errors import ConfigError
from cprec_recbole.quick_start import run
from cprec_recbole.ray_cluster import INSTALL
from cprec_recbole.tasks import run_tasks
from cprec_recbole.tune import grid, selection_score
from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def ray_address():
    """A Ray head on loopback for the module (starting one costs seconds): its own temp dir, so
    no other process on this machine finds it as the 'current' cluster; in the auth mode
    conftest sets for every Ray of the session."""
    ray = pytest.importorskip("ray")
    port, temp = free_port(), tempfile.mkdtemp(prefix="ray", dir="/tmp")
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block"]
    command += [f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2"]
    command += ["--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]
    command += ["--object-store-memory=200000000"]
    env = {**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # SIGTERM waited 30 s
    head = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while not answers(("127.0.0.1", port)) and time.monotonic() < deadline:
        time.sleep(0.5)
    yield f"127.0.0.1:{port}"
    ray.shutdown()
    head.send_signal(signal.SIGTERM)  # --block: the head stops its cluster's processes
    head.wait(60)
    shutil.rmtree(temp, ignore_errors=True)


def python(code: str) -> dict:
    """Arguments of subprocess.run / Popen for ``python -c code`` on this checkout."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return {"args": [sys.executable, "-c", code], "env": env, "cwd": REPO}


def cli(args: list[str], code: str = "") -> subprocess.CompletedProcess:
    """``run_recbole_llm.py args`` in a fresh interpreter (``code`` runs first)."""
    script = f"import sys; {code}\nfrom cprec_recbole.cli import main; sys.exit(main({args!r}))"
    return subprocess.run(
        **python(script), check=False, capture_output=True, text=True, timeout=120
    )


def test_grid_lists_every_combination_in_order():
    space = {"learning_rate": [1e-3, 1e-4], "seed": [1, 2]}
    assert grid(space) == [
        {"learning_rate": 1e-3, "seed": 1},
        {"learning_rate": 1e-3, "seed": 2},
        {"learning_rate": 1e-4, "seed": 1},
        {"learning_rate": 1e-4, "seed": 2},
    ]
    assert grid({"epochs": 3}) == [{"epochs": 3}]
    with pytest.raises(ConfigError, match="tune_space must map"):
        grid([1e-3])


def test_selection_multiplies_hr1_by_valid_ratio_where_answers_can_be_invalid():
    assert selection_score({"hr@1": 0.4}) == 0.4
    assert selection_score({"hr@1": 0.4, "valid_ratio": 0.5}) == 0.2


def test_a_model_that_trains_nothing_is_refused_before_ray_starts(tiny_base):
    overrides = {**tiny_base, "llm_backbone": "tiny-random", "tune": True}
    with pytest.raises(ConfigError, match="model LLaMA2ZeroShot trains nothing"):
        run("LLaMA2ZeroShot", "Tiny", overrides=overrides)
    assert not (Path(tiny_base["output_dir"]) / "tune").exists()


def test_plan_of_a_search_lists_the_shared_stages_once_then_each_trials_own(tiny_sft, capsys):
    from cprec_recbole.cli import main

    searched = {**tiny_sft, "tune": True, "tune_space": "{learning_rate: [0.001, 0.003]}"}
    args = [f"--{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in searched.items()]
    assert main(["--model=LLaRA", "--dataset=Tiny", "--plan", *args]) == 0
    assert not Path(tiny_sft["output_dir"]).exists()
    groups = capsys.readouterr().out.strip().split("\n\n")
    stages = {g.splitlines()[0]: [r.split()[0] for r in g.splitlines()[2:]] for g in groups}
    assert stages == {
        "shared (built once, before the runs):": ["data", "rec_model"],
        "trial 0 {'learning_rate': 0.001}:": ["sft"],  # a trial stops at its validating step
        "trial 1 {'learning_rate': 0.003}:": ["sft"],
    }


def test_sasrec_search_on_a_cluster_picks_the_learning_rate_that_learns(
    tiny_overrides, ray_address
):
    """1e-7 leaves SASRec at chance on Tiny's cyclic walks, 1e-2 learns them: the answer is known."""
    import ray

    overrides = {
        **tiny_overrides,
        "ray_address": ray_address,
        "epochs": 15,
        "tune": True,
        "tune_space": {"learning_rate": [1e-7, 1e-2]},
        "tune_cpus_per_trial": 1,  # two trials side by side on two cores
    }
    results = run("SASRec", "Tiny", overrides=overrides)
    assert ray.get_runtime_context().gcs_address.endswith(ray_address.split(":")[1])
    summary = results["tune"]
    assert summary["chosen"] == {"learning_rate": 1e-2} and summary["trials"] == 2
    table = pd.read_csv(Path(summary["tune_folder"]) / "trials.csv")
    assert table["learning_rate"].tolist() == [1e-7, 1e-2]
    assert table["score"][1] > 0.5 > table["score"][0]
    folders = list(Path(tiny_overrides["output_dir"]).glob("rec_model/*/manifest.json"))
    rates = sorted(json.loads(f.read_text())["config"]["learning_rate"] for f in folders)
    assert rates == [1e-7, 1e-2]  # one stage folder per trial, none shared
    assert results["test"]["hr@1"] > 0.5 and summary["test"] == results["test"]
    assert (
        "chosen: {'learning_rate': 0.01}"
        in (Path(summary["tune_folder"]) / "trials.md").read_text()
    )


def test_llara_search_validates_each_trial_and_tests_only_the_chosen(
    tiny_sft, tiny_base, ray_address
):
    overrides = {
        **tiny_sft,
        "ray_address": ray_address,
        "rec_model_overrides": {"epochs": 1, "hidden_size": 16, "inner_size": 32, "n_layers": 1},
        "tune": True,
        "tune_space": {"learning_rate": [1e-3, 3e-3]},
    }
    results = run("LLaRA", "Tiny", overrides=overrides)
    saved = Path(tiny_base["output_dir"])
    assert len(list(saved.glob("sft/*/manifest.json"))) == 2  # a folder per trial
    assert len(list(saved.glob("rec_model/*/manifest.json"))) == 1  # shared, built once
    assert len(list(saved.glob("eval/*/manifest.json"))) == 1  # test: the chosen trial only
    table = pd.read_csv(Path(results["tune"]["tune_folder"]) / "trials.csv")
    best = table.loc[table["score"].idxmax(), "learning_rate"]
    assert results["tune"]["chosen"] == {"learning_rate": best}


def test_a_trial_over_two_ray_train_workers_trains_what_one_process_trains(
    tiny_sft, tmp_path, ray_address
):
    """tune_workers_per_trial=2: the trial is a TorchTrainer of two CPU workers in one gloo
    group, which share each SFT step's two micro-batches; data parallelism changes no weight."""
    from tests.test_distributed import WEIGHTS, _assert_same_weights

    small = {"epochs": 1, "hidden_size": 16, "inner_size": 32, "n_layers": 1}
    base = {**tiny_sft, "rec_model_overrides": small, "micro_batch_size": 4}
    one = {**base, "output_dir": str(tmp_path / "one")}
    run("LLaRA", "Tiny", overrides=one)
    two = {**base, "output_dir": str(tmp_path / "two"), "ray_address": ray_address}
    two |= {"tune": True, "tune_space": {"seed": [2020]}, "tune_workers_per_trial": 2}
    results = run("LLaRA", "Tiny", overrides=two)
    sft = [pattern for pattern in WEIGHTS if pattern.startswith("sft/")]  # LLaRA: no CPT
    _assert_same_weights(one["output_dir"], two["output_dir"], sft)
    manifest = json.loads(next(Path(two["output_dir"]).glob("sft/*/manifest.json")).read_text())
    assert manifest["world_size"] == 2
    table = pd.read_csv(Path(results["tune"]["tune_folder"]) / "trials.csv")
    assert table["score"].notna().all() and table["error"].isna().all()


def test_workers_that_cannot_share_a_step_are_refused_before_ray_starts(tiny_sft):
    ray = pytest.importorskip("ray")
    ray.shutdown()  # a search of an earlier test may have joined Ray in this process
    overrides = {**tiny_sft, "tune": True, "tune_workers_per_trial": 3}  # 1 micro-batch a step
    with pytest.raises(ConfigError, match="1 micro-batch.* which 3 processes cannot share"):
        run("LLaRA", "Tiny", overrides=overrides)
    assert not ray.is_initialized() and not Path(tiny_sft["output_dir"]).exists()


def test_an_interrupted_search_resumes_without_redoing_its_finished_trial(
    tiny_overrides, ray_address, caplog
):
    """The driver is killed once a trial has reported; run again, the search is restored from
    Ray's folder: every record written before the kill stays as it was, every trial ends with a
    score, one is chosen. (A Tiny trial takes a fraction of a second: on a quiet machine the
    other trial, or the whole search, may be done by the kill; the restore path runs either way.)"""
    overrides = {
        **tiny_overrides,
        "ray_address": ray_address,
        "tune": True,
        "tune_space": {"learning_rate": [1e-2, 1e-7]},
        "tune_cpus_per_trial": 2,  # one trial at a time on the 2-CPU head
    }
    code = f"from cprec_recbole.quick_start import run; run('SASRec', 'Tiny', (), {overrides!r})"
    driver = subprocess.Popen(**python(code))
    saved = Path(tiny_overrides["output_dir"])
    deadline = time.monotonic() + 300  # a trial under a loaded CPU (CI beside other jobs)
    while not [p for p in saved.glob("tune/*/ray/*/result.json") if p.stat().st_size]:
        assert driver.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    driver.kill()
    driver.wait()
    records = {p: p.read_text() for p in saved.glob("tune/*/ray/*/result.json") if p.stat().st_size}
    with caplog.at_level(logging.INFO, logger="cprec_recbole.tune"):
        results = run("SASRec", "Tiny", overrides=overrides)
    assert "tune: resuming the search in" in caplog.text
    assert {p: p.read_text() for p in records} == records  # restored, not run again
    table = pd.read_csv(Path(results["tune"]["tune_folder"]) / "trials.csv")
    assert table["learning_rate"].tolist() == [1e-2, 1e-7] and table["score"].notna().all()
    assert results["tune"]["chosen"] == {"learning_rate": 1e-2}


def test_independent_tasks_run_on_the_cluster_at_ray_address(ray_address):
    """The corpus shards' path (tasks.run_tasks) on a cluster joined by its address."""
    done = run_tasks(operator.add, [1, 2, 3], 10, ray_address)
    assert sorted(done) == [(0, 11), (1, 12), (2, 13)]


def test_an_address_where_nothing_answers_is_one_line_and_exit_2(tiny_base):
    address = f"127.0.0.1:{free_port()}"  # bound then closed: refuses connections
    args = ["--model=SASRec", "--dataset=Tiny", "--tune=true", f"--ray_address={address}"]
    args += [f"--{key}={value}" for key, value in tiny_base.items()]
    started = time.monotonic()
    child = cli(args)
    assert child.returncode == 2 and time.monotonic() - started < 60
    [line] = child.stderr.strip().splitlines()
    assert line.startswith(f"error: ray_address {address}: no answer within 30 s")
    assert not Path(tiny_base["output_dir"]).exists()


def test_tune_without_ray_installed_names_the_install_command(tiny_base):
    args = ["--model=SASRec", "--dataset=Tiny", "--tune=true"]
    args += [f"--{key}={value}" for key, value in tiny_base.items()]
    child = cli(args, code="sys.modules['ray'] = None  # what a missing package raises")
    assert child.returncode == 2
    [line] = child.stderr.strip().splitlines()
    assert line == f"error: --tune=true needs Ray, which is not installed: run {INSTALL}"
    assert not Path(tiny_base["output_dir"]).exists()
