"""Processes asking for the same stage at once: one builds, the others wait and reuse it."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cprec_recbole.stages import MANIFEST, Stage, run_stage

# A child process: signal readiness, wait for the test's "go", then ask for the stage; the build
# logs start/end into a shared file (O_APPEND: whole lines), so overlapping builds would show.
CHILD = """
import logging, sys, time
from pathlib import Path
from cprec_recbole.stages import Stage, run_stage

root, me, sleep_s = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
logging.basicConfig(level=logging.INFO, format="%(message)s")

def build(folder, config):
    with open(root / "builds.txt", "a") as log:
        log.write(f"start {me}\\n")
    (root / f"building-{me}").touch()
    (folder / "part.txt").write_text(me)
    time.sleep(sleep_s)
    (folder / "built.txt").write_text(me)
    with open(root / "builds.txt", "a") as log:
        log.write(f"end {me}\\n")
    return {"builder": me}

(root / f"ready-{me}").touch()
while not (root / "go").exists():
    time.sleep(0.01)
config = {"output_dir": str(root / "saved"), "what": "lock test"}
run_stage(Stage("demo", reads=("what",), build=build), config)
"""


def start_child(root: Path, me: str, sleep_s: float) -> subprocess.Popen:
    command = [sys.executable, "-c", CHILD, str(root), me, str(sleep_s)]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.time() + timeout_s
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_two_processes_asking_for_one_stage_build_it_once_and_both_use_it(tmp_path):
    children = {me: start_child(tmp_path, me, 1.5) for me in ("a", "b")}
    for me in children:
        wait_for(tmp_path / f"ready-{me}")
    (tmp_path / "go").touch()
    errors = {me: child.communicate(timeout=60)[1] for me, child in children.items()}
    assert all(child.returncode == 0 for child in children.values()), errors
    (builder,) = [p.name.removeprefix("building-") for p in tmp_path.glob("building-*")]
    waiter = "b" if builder == "a" else "a"
    assert (tmp_path / "builds.txt").read_text().split("\n") == [
        f"start {builder}",
        f"end {builder}",
        "",
    ]
    assert "stage demo: waiting for another process building" in errors[waiter]
    assert "stage demo: reusing" in errors[waiter]
    (folder,) = (tmp_path / "saved" / "demo").iterdir()
    assert (folder / "built.txt").read_text() == builder
    assert json.loads((folder / MANIFEST).read_text())["metrics"] == {"builder": builder}


@pytest.mark.parametrize("resumable", [False, True])
def test_a_builder_killed_holding_the_lock_does_not_block_the_next_run(tmp_path, caplog, resumable):
    child = start_child(tmp_path, "killed", 60)
    wait_for(tmp_path / "ready-killed")
    (tmp_path / "go").touch()
    wait_for(tmp_path / "building-killed")
    os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=30)
    seen = []

    def build(folder: Path, config) -> dict:
        seen.extend(p.name for p in folder.iterdir() if p.name != ".lock")
        (folder / "built.txt").write_text("next")
        return {}

    caplog.set_level(logging.INFO, logger="cprec_recbole.stages")
    config = {"output_dir": str(tmp_path / "saved"), "what": "lock test"}
    folder = run_stage(Stage("demo", reads=("what",), build=build, resumable=resumable), config)
    assert (folder / "built.txt").read_text() == "next" and (folder / MANIFEST).is_file()
    assert seen == (["part.txt"] if resumable else [])  # only a resumable stage keeps its work
    verb = "continuing" if resumable else "building"
    assert "waiting" not in caplog.text and f"stage demo: {verb}" in caplog.text
