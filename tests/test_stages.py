"""Declared stages: reads outside the declaration are refused, damaged cached stages reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cprec_recbole.cli import main
from cprec_recbole.errors import ConfigError
from cprec_recbole.llm.loop import checkpoints
from cprec_recbole.run_config import RunConfig, UndeclaredKeyError
from cprec_recbole.stages import MANIFEST, Stage, StageError, planning, progress, run_stage


def _write(folder: Path, config: RunConfig) -> dict:
    (folder / "weights.bin").write_bytes(bytes(range(256)) * int(config["size"]))
    return {"size": config["size"]}


@pytest.fixture
def config(tmp_path):
    return RunConfig({"output_dir": str(tmp_path / "saved"), "size": 4, "secret": 1})


def test_a_stage_reading_an_undeclared_key_fails_naming_stage_and_key(config):
    def build(folder: Path, config: RunConfig) -> dict:
        return {"size": config["size"], "secret": config.get("secret")}

    stage = Stage("demo", reads=("size",), build=build)
    with pytest.raises(UndeclaredKeyError, match="stage 'demo' read config key 'secret'"):
        run_stage(stage, config)
    (folder,) = Path(config["output_dir"], "demo").iterdir()
    assert not (folder / MANIFEST).exists()  # nothing half-done is taken for a result
    assert issubclass(UndeclaredKeyError, ConfigError)  # the CLI shows it as one line


def test_a_stage_may_not_copy_the_whole_config_but_may_derive_keys(config):
    def copies(folder: Path, config: RunConfig) -> None:
        dict(config)

    with pytest.raises(UndeclaredKeyError, match="iterated over the whole config"):
        run_stage(Stage("copy", reads=("size",), build=copies), config)

    def derives(folder: Path, config: RunConfig) -> dict:
        return {"double": config.updated(double=2 * config["size"])["double"]}

    folder = run_stage(Stage("derive", reads=("size",), build=derives), config)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["metrics"] == {"double": 8} and manifest["read"] == ["double", "size"]


def test_the_hash_covers_exactly_the_declared_keys_inputs_and_version(config):
    stage = Stage("demo", reads=("size",), build=_write)
    first = run_stage(stage, config)
    assert run_stage(stage, config.updated(secret=2)) == first  # not read, not hashed
    assert run_stage(stage, config.updated(size=5)) != first
    assert run_stage(Stage("demo", reads=("size",), build=_write, version=2), config) != first
    needs = Stage("after", reads=(), needs=("demo",), build=lambda f, c: None)
    assert run_stage(needs, config, {"demo": first}) != run_stage(needs, config, {"demo": None})
    with pytest.raises(TypeError, match="needs"):
        run_stage(needs, config, {})


def test_a_key_added_later_is_hashed_only_when_set_off_its_old_behaviour(config):
    old = run_stage(Stage("demo", reads=("size",), build=_write), config)
    added = Stage("demo", reads=("size", "warm"), build=_write, added={"warm": 0})
    assert run_stage(added, config.updated(warm=0)) == old  # the folders built before it
    assert run_stage(added, config.updated(warm=3)) != old
    with pytest.raises(TypeError, match=r"added keys \['warm'\] are not in reads"):
        Stage("demo", reads=("size",), build=_write, added={"warm": 0})


def test_a_damaged_checkpoint_cursor_names_the_checkpoint_and_the_stage_to_rebuild(config):
    def resume(folder: Path, config: RunConfig) -> dict:
        return {"steps": max(checkpoints(folder / "checkpoints"), default=(0, None))[0]}

    stage = Stage("demo", reads=("size",), build=resume, resumable=True)
    folder = run_stage(stage, config, force=True)
    (folder / MANIFEST).unlink()  # a partial stage, killed after checkpoint 7
    cursor = folder / "checkpoints" / "rolling-7" / "cursor.json"
    cursor.parent.mkdir(parents=True)
    for damage in ('{"steps_done": 7', "[7]"):
        cursor.write_text(damage)
        with planning() as plan:
            run_stage(stage, config)
        assert plan[0].state == "partial (checkpoint rolling-7: its cursor.json is unreadable)"
    cursor.write_text('{"steps_done": 7')
    with pytest.raises(StageError) as error:
        run_stage(stage, config)
    assert f"{cursor} is damaged (JSONDecodeError" in str(error.value)
    assert f"delete {cursor.parent}" in str(error.value) and "--force=demo" in str(error.value)
    cursor.write_text('{"steps_done": 7}')
    assert json.loads((run_stage(stage, config) / MANIFEST).read_text())["metrics"] == {"steps": 7}


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "weights.bin has 100 bytes, 1024 when"),
        (lambda p: p.write_bytes(bytes(1024)), "weights.bin changed since it was built"),
        (lambda p: p.unlink(), "weights.bin is missing"),
    ],
)
def test_a_damaged_cached_stage_is_reported_not_used_and_force_rebuilds_it(config, damage, message):
    stage = Stage("demo", reads=("size",), build=_write)
    folder = run_stage(stage, config)
    files = json.loads((folder / MANIFEST).read_text())["files"]
    assert files["weights.bin"]["size"] == 1024 and len(files["weights.bin"]["sha256"]) == 64
    damage(folder / "weights.bin")
    with pytest.raises(StageError, match=f"{message}.*--force=demo"):
        run_stage(stage, config)
    assert run_stage(stage, config, force=True) == folder
    assert (folder / "weights.bin").read_bytes() == bytes(range(256)) * 4


def test_a_truncated_sasrec_checkpoint_ends_the_cli_with_one_line(tiny_overrides, capsys):
    args = [f"--{k}={v}" for k, v in tiny_overrides.items() if not isinstance(v, dict)]
    args += ["--model=SASRec", "--dataset=Tiny", "--epochs=1"]
    assert main(args) == 0
    (checkpoint,) = Path(tiny_overrides["output_dir"]).glob("rec_model/*/model.pth")
    checkpoint.write_bytes(checkpoint.read_bytes()[:10])
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: stage rec_model: the cached ") and "Traceback" not in err
    assert "model.pth has 10 bytes" in last and "--force=rec_model" in last


def test_a_checkpoints_progress_says_how_long_the_rest_takes_at_its_rate():
    cursor = {"steps_done": 720, "total_steps": 1414, "train_time_s": 4814.1, "world_size": 1}
    assert progress(cursor) == "720/1414 steps done in 1h20m, ~1h17m left at that rate"
    assert progress({"steps_done": 7, "world_size": 1}) == "7 steps done"  # before session 27
