"""Data-parallel SFT, CPT and evaluation: 2 gloo processes on CPUs (``torchrun``) against one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cprec_recbole.cli import main
from tests.conftest import REPO
from tests.test_cpt import KILL_AT_CHECKPOINT, _run_cprec, cpt_overrides  # noqa: F401

ADAPTER = "adapter/adapter_model.safetensors"
#: What data parallelism must leave as one process computes it: the trained weights...
WEIGHTS = (f"cpt/*/{ADAPTER}", f"sft/*/{ADAPTER}", "sft/*/projector.safetensors")
#: ... and the evaluation (metrics and every user's rank).
EVALUATION = ("eval/*/results.json", "eval/*/test_ranks.tsv")
#: Tolerance of 2-process weights against 1 process: two micro-batch gradients summed by gloo
#: are the sum one process accumulates (a + b either way), so equality is expected; the margin
#: covers a reduction order that differs from one gloo build to another (float32 rounding).
RTOL, ATOL = 1e-5, 1e-7


@pytest.fixture
def parallel_overrides(cpt_overrides: dict) -> dict:  # noqa: F811 (the fixture)
    """The tests' CPRec run with two micro-batches per SFT step (CPT already has two)."""
    return {**cpt_overrides, "micro_batch_size": 4}


def _torchrun(
    overrides: dict, kill_at: int = 0, model: str = "CPRec"
) -> subprocess.CompletedProcess:
    """``model`` on 2 gloo processes, rank by rank as ``_run_cprec`` runs CPRec on one."""
    script = KILL_AT_CHECKPOINT.replace('run("CPRec"', f'run("{model}"')
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *("--no-python", sys.executable, "-c", script),
        *(json.dumps(overrides), str(kill_at)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        command, check=False, cwd=REPO, capture_output=True, text=True, timeout=600, env=env
    )


def _one(folder: str, pattern: str) -> Path:
    (path,) = Path(folder).glob(pattern)
    return path


def _assert_same_weights(left: str, right: str, patterns=WEIGHTS) -> None:
    for pattern in patterns:
        a, b = load_file(_one(left, pattern)), load_file(_one(right, pattern))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=RTOL, atol=ATOL)


def test_two_processes_train_and_evaluate_as_one_process_does(parallel_overrides, tmp_path):
    one = {**parallel_overrides, "output_dir": str(tmp_path / "one")}
    two = {**parallel_overrides, "output_dir": str(tmp_path / "two")}
    assert _run_cprec(one).returncode == 0
    ran = _torchrun(two)
    assert ran.returncode == 0, ran.stderr[-3000:]
    _assert_same_weights(one["output_dir"], two["output_dir"])
    for pattern in EVALUATION:
        results = [_one(o["output_dir"], pattern).read_text() for o in (one, two)]
        if pattern.endswith(".json"):
            results = [json.loads(r)["test"] for r in results]
        assert results[0] == results[1]
    for stage in ("cpt", "sft", "eval"):
        sizes = [
            json.loads(_one(o["output_dir"], f"{stage}/*/manifest.json").read_text())
            for o in (one, two)
        ]
        assert [m["world_size"] for m in sizes] == [1, 2]
        assert sizes[0]["config"] == sizes[1]["config"]  # one stage, whatever the world size


def test_a_killed_parallel_cpt_resumes_at_its_world_size_to_the_uninterrupted_weights(
    parallel_overrides, tmp_path
):
    """CPTLLaRA: CPT, then evaluation without SFT (what a kill mid-CPT needs, in less time)."""
    whole = {**parallel_overrides, "output_dir": str(tmp_path / "whole")}
    killed = {**parallel_overrides, "output_dir": str(tmp_path / "killed")}
    assert _torchrun(whole, model="CPTLLaRA").returncode == 0
    assert _torchrun(killed, kill_at=3, model="CPTLLaRA").returncode != 0  # ranks -9 at the 3rd
    checkpoints = _one(killed["output_dir"], "cpt/*/checkpoints")
    before = sorted(p.name for p in checkpoints.iterdir())
    args = [f"--{k}={json.dumps(v)}" for k, v in killed.items()]
    assert main(["--model=CPTLLaRA", "--dataset=Tiny", *args]) == 2  # one process: refused
    assert sorted(p.name for p in checkpoints.iterdir()) == before
    resumed = _torchrun(killed, model="CPTLLaRA")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint" in resumed.stderr
    _assert_same_weights(whole["output_dir"], killed["output_dir"], WEIGHTS[:1])


def _cli(overrides: dict, *extra: str) -> int:
    args = [f"--{k}={json.dumps(v)}" for k, v in overrides.items()]
    return main(["--model=LLaRA", "--dataset=Tiny", *args, *extra])


@pytest.mark.parametrize(
    "world, extra, culprit",
    [
        ("2", ("--micro_batch_size=8",), "train_batch_size=8 with micro_batch_size=8"),
        ("1", ("--device=cuda",), "config key 'device' is 'cuda'"),
        ("1", ("--llm_path=./no/such/folder",), "config key 'llm_path'"),
    ],
)
def test_bad_launches_exit_2_naming_the_culprit_before_writing_anything(
    tiny_sft, monkeypatch, capsys, world, extra, culprit
):
    if "cuda" in culprit and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv("WORLD_SIZE", world)  # as a launcher of that many processes sets it
    assert _cli(tiny_sft, *extra) == 2
    err = capsys.readouterr().err
    assert culprit in err and len(err.strip().splitlines()) == 1
    assert not Path(tiny_sft["output_dir"]).exists()
