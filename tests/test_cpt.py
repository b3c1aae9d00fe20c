"""CPRec's CPT stage, the shared training loop and the CPT models, on tiny-random and tiny data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cprec_recbole.cli import main
from cprec_recbole.errors import ConfigError
from cprec_recbole.llm.backbone import add_lora
from cprec_recbole.llm.cpt import VARIANTS, cpt_plan, length_grouped, variant_order
from cprec_recbole.llm.loop import (
    STATE,
    LoopArguments,
    Plan,
    TrainLoop,
    batch_steps,
    checkpoints,
    mixed_precision,
)
from cprec_recbole.llm.sft import trainable_state
from cprec_recbole.logs import clock
from cprec_recbole.quick_start import run
from tests.conftest import REPO, cyclic_sequences, write_dataset
from tests.llm_fixtures import LORA_DEFAULTS, tiny_backbone

TOKENS = torch.randint(3, 40, (8, 6), generator=torch.Generator().manual_seed(0))
HALVED = Plan(batch_steps(range(8), 2, 1), checkpoints={2: ["half"]})  # 4 steps, checkpoint at 2
PHASE = np.array([0] * 40 + [1] * 10)  # 40 domain-specific then 10 mixed corpus rows


def test_cprec_variant_anneals_on_mixed_samples_after_all_domain_specific_ones():
    order, phases = variant_order(PHASE, "DS+Mix(A)", seed=0, warmup_ratio=0.05)
    assert phases == {"warmup": 2, "stable": 40, "total": 50, "mixed_from": 40}
    assert (PHASE[order[:40]] == 0).all() and (PHASE[order[40:]] == 1).all()
    assert sorted(order) == list(range(50))


@pytest.mark.parametrize(
    "variant, phases, tail_is_mixed",
    [
        ("DS", {"warmup": 2, "stable": 40, "total": 40, "mixed_from": 40}, False),
        ("DS+Mix(S)", {"warmup": 2, "stable": 50, "total": 50, "mixed_from": 40}, True),
        ("DS+Mix(N)", {"warmup": 2, "stable": 40, "total": 50, "mixed_from": None}, None),
    ],
)
def test_each_ablation_yields_its_documented_phase_order(variant, phases, tail_is_mixed):
    order, got = variant_order(PHASE, variant, seed=0, warmup_ratio=0.05)
    assert got == phases and len(set(order)) == len(order) == phases["total"]
    if tail_is_mixed is True:  # mixed last, but at the stable rate
        assert (PHASE[order[40:]] == 1).all()
    elif tail_is_mixed is False:  # no mixed data at all
        assert (PHASE[order] == 0).all()
    else:  # shuffled together: mixed rows occur before the last ten
        assert (PHASE[order[:40]] == 1).any()
    assert set(VARIANTS) == {"DS", "DS+Mix(N)", "DS+Mix(S)", "DS+Mix(A)"}


def test_sample_caps_take_seeded_subsets_of_each_phase():
    order, phases = variant_order(PHASE, "DS+Mix(A)", 3, 0.1, ds_limit=20, mixed_limit=4)
    again, _ = variant_order(PHASE, "DS+Mix(A)", 3, 0.1, ds_limit=20, mixed_limit=4)
    assert phases == {"warmup": 2, "stable": 20, "total": 24, "mixed_from": 20}
    assert (order == again).all() and (PHASE[order[20:]] == 1).all()


def test_phase_boundaries_fall_on_step_boundaries_and_name_checkpoints():
    order, phases = variant_order(PHASE, "DS+Mix(A)", seed=0, warmup_ratio=0.1)  # warm-up: 4
    lengths = np.arange(50) % 7
    plan, steps = cpt_plan(
        order, phases, lengths, micro=3, accumulate=2, seed=0, checkpoint_samples=[20, 99]
    )
    done = np.cumsum(plan.samples_per_step)
    assert done[steps["warmup"] - 1] == 4 and done[steps["stable"] - 1] == 40
    assert done[-1] == 50 and steps["total"] == len(plan.steps)
    flat = [i for step in plan.steps for micro in step for i in micro]
    assert sorted(flat) == list(range(50))
    assert set(flat[:40]) == set(order[:40].tolist())  # grouping never crosses a phase boundary
    assert plan.checkpoints[steps["stable"]] == ["stable"]
    assert plan.checkpoints[plan.step_after_samples(20)] == ["samples-20"]
    assert "samples-99" not in str(plan.checkpoints)  # beyond the corpus


def test_length_grouped_micro_batches_pad_less_than_the_shuffled_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(100, 400, 256)
    ids = rng.permutation(256)

    def padding(micros):
        return sum(len(m) * lengths[m].max() - lengths[m].sum() for m in micros)

    grouped = length_grouped(ids, lengths, micro=4, seed=0)
    naive = [ids[i : i + 4] for i in range(0, 256, 4)]
    assert sorted(i for m in grouped for i in m) == list(range(256))
    assert padding(grouped) < padding(naive) / 5


def test_saved_best_state_is_a_copy_that_later_steps_do_not_change():
    # Early stopping restores the best epoch's weights; a saved state that aliases the live
    # projector tensors (projector.state_dict() uncloned) would follow later epochs instead.
    model = torch.nn.Linear(3, 3)
    projector = torch.nn.Linear(2, 2)
    state = trainable_state(model, projector)
    with torch.no_grad():
        projector.weight.add_(1.0)
        model.weight.add_(1.0)
    assert not torch.equal(state["projector"]["weight"], projector.weight)
    assert not torch.equal(state["lora"]["weight"], model.weight)


# --------------------------------------------------------------------------- end to end


def write_cpt_domains(root: Path, names=("ShopA", "ShopB")) -> Path:
    """Downstream ``Tiny`` plus CPT domains with the same users (so mixed windows exist)."""
    write_dataset(root, "Tiny", cyclic_sequences())
    for name in names:
        sequences = {f"s{u}": [f"{name}{(u + t) % 30}" for t in range(7)] for u in range(24)}
        write_dataset(root, name, sequences)
    return root


@pytest.fixture
def cpt_overrides(tmp_path: Path) -> dict:
    data = write_cpt_domains(tmp_path / "data")
    return {
        "data_path": str(data),
        "output_dir": str(tmp_path / "saved"),
        "llm_backbone": "tiny-random",
        "show_progress": False,
        "sft_samples": 32,
        "valid_users": 8,
        "eval_users": 12,
        "micro_batch_size": 8,
        "train_batch_size": 8,
        "checkpoint_every": 16,
        "cpt_samples": 48,
        "cpt_mixed_samples": 16,
        "cpt_batch_size": 8,
        "cpt_micro_batch_size": 4,
        "cpt_checkpoint_samples": [24],
        "rec_model_overrides": {"epochs": 1, "hidden_size": 16, "inner_size": 32, "n_layers": 1},
    }


def test_cprec_runs_corpus_cpt_sft_and_eval_and_cptllara_reuses_the_cpt(cpt_overrides, caplog):
    caplog.set_level("INFO")
    result = run("CPRec", "Tiny", overrides={**cpt_overrides, "plot_schedule": True})
    saved = Path(cpt_overrides["output_dir"])
    (cpt,) = saved.glob("cpt/*/manifest.json")
    metrics = json.loads(cpt.read_text())["metrics"]
    assert metrics["samples"] == 64 and metrics["mixed_samples"] == 16
    assert metrics["phases_in_samples"] == {
        "warmup": 2,
        "stable": 48,
        "total": 64,
        "mixed_from": 48,
    }
    folder = cpt.parent
    assert {"warmup", "stable", "annealing", "samples-24"} <= {
        p.name for p in (folder / "checkpoints").iterdir()
    }
    assert not list((folder / "checkpoints").glob("rolling-*"))
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    assert (folder / "lr_schedule.png").stat().st_size > 0
    assert result["test"]["users"] == 12
    caplog.clear()
    zero = run("CPTLLaRA", "Tiny", overrides=cpt_overrides)
    assert "stage cpt: reusing" in caplog.text and "stage sft" not in caplog.text
    assert zero["candidates_sha256"] == result["candidates_sha256"]
    caplog.clear()
    run("CPRec", "Tiny", overrides={**cpt_overrides, "seed": 7})  # another SFT seed: same CPT
    assert "stage cpt: reusing" in caplog.text and "stage sft: building" in caplog.text
    early = run("CPTLLaRA", "Tiny", overrides={**cpt_overrides, "cpt_checkpoint": 24})
    assert early["folder"] != zero["folder"]  # the data-volume study: SFT/eval from 24 samples
    keys = json.loads((Path(early["folder"]) / "manifest.json").read_text())["config"]
    assert (keys["cpt_stage"], keys["cpt_checkpoint"]) == (folder.name, 24)
    with pytest.raises(
        ConfigError, match="no checkpoint samples-999 .* kept: annealing, samples-24"
    ):
        run("CPTLLaRA", "Tiny", overrides={**cpt_overrides, "cpt_checkpoint": 999})


def test_cpt_adapters_change_what_cprec_starts_from(cpt_overrides):
    run("CPTLLaRA", "Tiny", overrides=cpt_overrides)
    (adapter,) = Path(cpt_overrides["output_dir"]).glob("cpt/*/adapter/adapter_model.safetensors")
    weights = load_file(adapter)
    assert any(
        name.endswith("lora_B.weight") and value.abs().sum() > 0 for name, value in weights.items()
    )


KILL_AT_CHECKPOINT = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from cprec_recbole.llm import loop
    from cprec_recbole.quick_start import run

    overrides, kill_at = json.loads(sys.argv[1]), int(sys.argv[2])
    written = []
    checkpoint = loop.TrainLoop.checkpoint

    def checkpoint_then_maybe_die(self, name):
        path = checkpoint(self, name)
        written.append(name)
        if len(written) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9`: no cleanup, no manifest
        return path

    loop.TrainLoop.checkpoint = checkpoint_then_maybe_die
    run("CPRec", "Tiny", overrides=overrides)
    """
)


def _run_cprec(overrides: dict, kill_at: int = 0) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", KILL_AT_CHECKPOINT, json.dumps(overrides), str(kill_at)]
    return subprocess.run(
        command, check=False, cwd=REPO, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("kill_at, stage", [(3, "cpt"), (7, "sft")])
def test_a_stage_killed_midway_resumes_to_the_same_weights_as_an_uninterrupted_run(
    cpt_overrides, tmp_path, kill_at, stage
):
    whole = {**cpt_overrides, "output_dir": str(tmp_path / "whole")}
    assert _run_cprec(whole).returncode == 0
    killed = {**cpt_overrides, "output_dir": str(tmp_path / "killed")}
    assert _run_cprec(killed, kill_at).returncode == -9
    stage_dirs = Path(killed["output_dir"]).glob("*/*")
    unfinished = [
        p for p in stage_dirs if not (p / "manifest.json").exists() and p.parent.name != "log"
    ]
    assert [p.parent.name for p in unfinished] == [stage] and (
        unfinished[0] / "checkpoints"
    ).is_dir()
    resumed = _run_cprec(killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        f"stage {stage}: continuing" in resumed.stderr
        and "resuming from checkpoint" in resumed.stderr
    )
    adapter = "adapter/adapter_model.safetensors"
    for artifact in (f"cpt/*/{adapter}", f"sft/*/{adapter}", "sft/*/projector.safetensors"):
        (a,) = Path(whole["output_dir"]).glob(artifact)
        (b,) = Path(killed["output_dir"]).glob(artifact)
        assert a.relative_to(whole["output_dir"]) == b.relative_to(killed["output_dir"])
        left, right = load_file(a), load_file(b)
        assert left.keys() == right.keys()
        assert all(torch.equal(left[k], right[k]) for k in left)


def test_a_new_domain_re_anneals_from_the_stable_checkpoint(cpt_overrides, caplog):
    write_cpt_domains(Path(cpt_overrides["data_path"]), names=("ShopC",))
    base = {**cpt_overrides, "cpt_domains": ["ShopA", "ShopB"]}
    run("CPTLLaRA", "Tiny", overrides=base)
    caplog.set_level("INFO")
    caplog.clear()
    run("CPTLLaRA", "Tiny", overrides={**base, "add_domain": "ShopC", "resume_from": "stable"})
    assert "cpt: resuming from checkpoint stable" in caplog.text
    manifests = [
        json.loads(p.read_text()) for p in Path(base["output_dir"]).glob("cpt/*/manifest.json")
    ]
    (first,) = [m for m in manifests if m["config"]["add_domain"] is None]
    (second,) = [m for m in manifests if m["config"].get("add_domain") == "ShopC"]
    assert (
        second["metrics"]["phases_in_steps"]["stable"]
        == first["metrics"]["phases_in_steps"]["stable"]
    )
    assert second["metrics"]["mixed_samples"] == second["metrics"]["samples"] == 16
    assert second["metrics"]["resumed_at_samples"] == 0  # the base run's steps count as done


def test_the_loop_clips_each_steps_gradient_norm(tmp_path):
    model = torch.nn.Linear(4, 1, bias=False)
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    args = LoopArguments("t", show_progress=False, max_grad_norm=0.5)
    loop = TrainLoop(model, None, optimizer, scheduler, tmp_path, args)
    loop.run(Plan([[[0]]]), lambda step, ids: 1000 * model(torch.ones(1, 4)).sum())
    assert torch.linalg.norm(model.weight.detach() - before) == pytest.approx(0.5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_mixed_precision_runs_adapters_in_the_backbones_half_dtype_on_fp32_weights(dtype):
    base, _ = tiny_backbone()
    model = add_lora(
        base.to(dtype), {**LORA_DEFAULTS, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    )
    seen: list[torch.dtype] = []
    adapters = [m for n, m in model.named_modules() if n.endswith("lora_A.default")]
    for adapter in adapters:
        adapter.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    ids = torch.tensor([[3, 4, 5, 6]])
    losses = {}
    for enabled in (False, True):
        seen.clear()
        with mixed_precision(model, enabled):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses[enabled] = float(loss.detach())
        half = enabled and dtype == torch.bfloat16  # fp32 backbones: a no-op
        assert set(seen) == {torch.bfloat16 if half else torch.float32}
        trained = [p for p in model.parameters() if p.requires_grad]
        assert {p.dtype for p in trained} == {p.grad.dtype for p in trained} == {torch.float32}
        model.zero_grad()
    assert losses[True] == pytest.approx(losses[False], rel=0.02)


def test_a_compiled_loop_trains_as_eager_does_and_resumes_bit_identically(tmp_path):
    """``compile: true`` (the cpu profile) changes kernels, not what is computed: the same
    weights as eager within bf16 rounding, and a run resumed from a checkpoint by a new loop
    (a new process compiles anew) ends exactly where an uninterrupted one does."""
    eager, eager_loop = _train_tiny(tmp_path / "eager", False, HALVED)
    whole, loop = _train_tiny(tmp_path / "whole", True, HALVED)
    assert loop.losses == pytest.approx(eager_loop.losses, rel=1e-2)
    assert eager.keys() == whole.keys()  # weights drift apart by Adam's sign of tiny gradients
    _train_tiny(tmp_path / "killed", True, Plan(HALVED.steps[:2], HALVED.checkpoints))
    assert [steps for steps, _ in checkpoints(tmp_path / "killed" / "checkpoints")] == [2]
    resumed, loop = _train_tiny(tmp_path / "killed", True, HALVED)
    assert loop.steps_done == 4 and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_resumed_loop_logs_the_rate_since_it_resumed_and_the_time_left(tmp_path, caplog):
    """A run resumed after hours elsewhere (here: a checkpoint that says it trained for a
    million seconds) logs the speed it trains at now, not its mean since the first step."""
    _train_tiny(tmp_path, False, Plan(HALVED.steps[:2], HALVED.checkpoints))
    state = tmp_path / "checkpoints" / "half" / STATE
    torch.save({**torch.load(state, weights_only=False), "train_time": 1e6}, state)
    caplog.set_level("INFO", logger="cprec_recbole.llm.loop")
    caplog.clear()  # the first run's lines, where an earlier test left the logger at INFO
    _train_tiny(tmp_path, False, HALVED)
    lines = [r.getMessage() for r in caplog.records if ": step " in r.getMessage()]
    assert [line.split(", loss")[0] for line in lines] == [
        "t: step 3/4, 6/8 samples",
        "t: step 4/4, 8/8 samples",
    ]
    rates = [float(re.search(r"([\d.]+) samples/s", line)[1]) for line in lines]
    assert min(rates) > 1  # 2 samples over a step's milliseconds; the mean since step 1 is 0.00
    assert lines[-1].endswith("samples/s, 0m00s left")


def test_clock_reads_as_hours_and_minutes_or_minutes_and_seconds():
    assert [clock(s) for s in (0, 247, 3599.6, 3900, 90061)] == [
        "0m00s",
        "4m07s",
        "1h00m",
        "1h05m",
        "25h01m",
    ]


def _train_tiny(folder: Path, compile: bool, plan: Plan) -> tuple[dict, TrainLoop]:
    """Train a LoRA tiny Llama over :data:`HALVED`'s batches of :data:`TOKENS`, from the
    folder's last checkpoint if it has one; its LoRA weights and the loop."""
    base, _ = tiny_backbone()
    torch.manual_seed(0)
    lora = {**LORA_DEFAULTS, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    model = add_lora(base.to(torch.bfloat16), lora)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    args = LoopArguments("t", show_progress=False, autocast=True, compile=compile)
    loop = TrainLoop(model, None, optimizer, scheduler, folder, args)
    loop.run(plan, lambda step, ids: model(input_ids=TOKENS[ids], labels=TOKENS[ids]).loss)
    assert all("forward" not in vars(layer) for layer in model.base_model.model.model.layers)
    return trainable_state(model, None)["lora"], loop


def test_compile_without_a_cpp_compiler_is_refused_before_training(monkeypatch):
    from cprec_recbole.llm.loop import CompiledDecoder

    model, _ = tiny_backbone()
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ConfigError, match="compile: true needs a C.. compiler.*--compile=false"):
        CompiledDecoder(model, True)
    assert CompiledDecoder(model, False).layers == []  # off: nothing is looked for


def test_ds_and_stable_mix_start_from_cprecs_run_and_end_as_if_trained_from_scratch(
    cpt_overrides, tmp_path
):
    from cprec_recbole.command import build_config
    from cprec_recbole.data.corpus import corpus_stage
    from cprec_recbole.llm.cpt import cpt_stage
    from cprec_recbole.plugins import load_plugins
    from cprec_recbole.run_config import RunConfig
    from cprec_recbole.stages import read_manifest

    plugins = load_plugins()

    def cpt(variant: str, output_dir: Path) -> Path:
        wanted = {**cpt_overrides, "output_dir": str(output_dir), "cpt_variant": variant}
        config = RunConfig(build_config("CPRec", "Tiny", plugins, [], wanted))
        return cpt_stage(config, plugins, corpus_stage(config, plugins))

    def adapter(folder: Path) -> dict:
        return load_file(folder / "adapter" / "adapter_model.safetensors")

    shared = tmp_path / "shared"
    cprec = cpt("DS+Mix(A)", shared)
    stable_end = json.loads((cprec / "checkpoints" / "stable" / "cursor.json").read_text())
    donors = {cprec.name}  # DS+Mix(S) may start from DS's end: the same state
    for variant in ("DS", "DS+Mix(S)"):
        folder = cpt(variant, shared)
        started = read_manifest(folder)["metrics"]["started_from"]
        assert started["stage"] in donors and started["steps"] == stable_end["steps_done"]
        donors.add(folder.name)
        alone = cpt(variant, tmp_path / f"alone-{variant}")
        assert read_manifest(alone)["metrics"]["started_from"] is None
        ours, theirs = adapter(folder), adapter(alone)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), variant
        assert (folder / "checkpoints" / "samples-24").is_dir()  # shared named checkpoints
    stable = adapter(cprec / "checkpoints" / "stable")
    assert all(torch.equal(stable[k], adapter(cpt("DS", shared))[k]) for k in stable)


def _tree(root: Path) -> list[tuple[str, float]]:
    return sorted((str(p), p.stat().st_mtime) for p in root.rglob("*"))


def test_plan_shows_a_partly_built_cprec_cached_partial_and_to_build_and_writes_nothing(
    cpt_overrides, capsys
):
    run("CPRec", "Tiny", overrides=cpt_overrides)
    saved = Path(cpt_overrides["output_dir"])
    (manifest,) = saved.glob("cpt/*/manifest.json")
    manifest.unlink()  # as if killed after its last checkpoint: the CPT stage is partial
    args = [
        f"--{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in cpt_overrides.items()
    ]
    args += ["--model=CPRec", "--dataset=Tiny", "--seed=7", "--plan"]  # another SFT seed
    before = _tree(saved)
    assert main(args) == 0
    assert _tree(saved) == before
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["stage", "hash", "state", "last_wall_time_s", "folder"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == ["data", "rec_model", "corpus", "cpt", "sft", "eval"]
    for stage in ("data", "rec_model", "corpus"):
        assert " cached " in rows[stage]
    assert "partial (checkpoint annealing: " in rows["cpt"]
    assert re.search(r": (\d+)/\1 steps done in 0m\d\ds, ~0m00s left at that rate\)", rows["cpt"])
    assert " to build " in rows["sft"] and " to build " in rows["eval"]
    wall = json.loads(next(saved.glob("sft/*/manifest.json")).read_text())["wall_time_s"]
    assert f" {wall:.1f} " in rows["sft"]  # the last SFT build's wall time, for an estimate


def test_compile_trains_eager_where_inductors_cpu_kernels_are_below_avx512():
    """torch 2.13's AVX2 inductor kernels make this loop's losses NaN (the test above fails
    under ATEN_CPU_CAPABILITY=avx2 without the guard): there the loop trains eager, saying so."""
    code = (
        "from tests.llm_fixtures import tiny_backbone\n"
        "from cprec_recbole.llm.loop import CompiledDecoder\n"
        "print(len(CompiledDecoder(tiny_backbone()[0], True).layers))\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "0"
    assert "compile: true ignored: inductor's avx2 CPU kernels give NaN losses" in done.stderr
