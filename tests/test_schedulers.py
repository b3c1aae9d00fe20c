"""Learning-rate schedules: WSA (paper eq. 2), WSD, linear, cosine, constant, and their plot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cprec_recbole.llm.schedulers import (
    constant,
    learning_rates,
    plot_schedule,
    schedule_keys,
    schedule_settings,
    warmup_cosine,
    warmup_linear,
    warmup_stable_annealing,
    warmup_stable_decay,
)
from cprec_recbole.plugins import load_plugins

ETA_L, ETA_H = 5e-6, 5e-4
W, S, A = 10, 70, 100
PHASES = {"warmup": W, "stable": S, "total": A}


def paper_wsa(s: int, warmup: int = W, stable: int = S, total: int = A) -> float:
    """Eq. 2 with eq. 3 for f, written out independently of the module."""
    if s <= warmup:
        return ETA_L + s / warmup * (ETA_H - ETA_L)
    if s <= stable:
        return ETA_H
    return ETA_L + 0.5 * (1 + math.cos(math.pi * (s - stable) / (total - stable))) * (ETA_H - ETA_L)


def wsa_rates(phases=PHASES, **config) -> np.ndarray:
    """Rates through a real optimizer whose base lr is eta_h, as CPT sets it."""
    config = {"eta_l": ETA_L, "eta_h": ETA_H, **config}
    return learning_rates(warmup_stable_annealing, phases, config, base_lr=config["eta_h"])


@pytest.mark.parametrize(
    "step",
    [0, W // 2, W, (W + S) // 2, S, S + 1, (S + A) // 2, A - 1],
    ids=["first", "mid-warmup", "W", "mid-stable", "S", "S+1", "mid-annealing", "last"],
)
def test_wsa_learning_rate_matches_paper_equation_at_boundaries_and_mid_phase(step):
    assert wsa_rates()[step] == pytest.approx(paper_wsa(step), rel=1e-9)


def test_wsa_learning_rate_starts_at_eta_l_and_reaches_eta_h_at_end_of_warmup():
    rates = wsa_rates()
    assert rates[0] == pytest.approx(ETA_L)
    assert rates[W] == pytest.approx(ETA_H)
    assert np.all(np.diff(rates[: W + 1]) > 0)


def test_wsa_learning_rate_is_eta_h_throughout_stable_phase():
    np.testing.assert_allclose(wsa_rates()[W : S + 1], ETA_H, rtol=1e-12)


def test_wsa_learning_rate_anneals_by_cosine_towards_eta_l():
    rates = wsa_rates()
    assert rates[(S + A) // 2] == pytest.approx((ETA_L + ETA_H) / 2)
    assert np.all(np.diff(rates[S:]) < 0)
    assert ETA_L < rates[-1] < rates[S + 1] < ETA_H


def test_wsa_has_no_annealing_when_stable_ends_at_total():
    rates = wsa_rates({"warmup": W, "stable": A, "total": A})
    np.testing.assert_allclose(rates[W:], ETA_H, rtol=1e-12)


def test_wsa_without_warmup_starts_at_eta_h():
    rates = wsa_rates({"warmup": 0, "stable": S, "total": A})
    np.testing.assert_allclose(rates[: S + 1], ETA_H, rtol=1e-12)
    assert rates[A - 1] == pytest.approx(paper_wsa(A - 1, warmup=0))


def test_wsa_curve_scales_with_another_base_lr():
    config = {"eta_l": ETA_L, "eta_h": ETA_H}
    rates = learning_rates(warmup_stable_annealing, PHASES, config, base_lr=2 * ETA_H)
    np.testing.assert_allclose(rates, 2 * wsa_rates(), rtol=1e-12)


def test_wsa_defaults_are_the_papers_rates():
    assert schedule_settings(warmup_stable_annealing, {}) == {"eta_l": 5e-6, "eta_h": 5e-4}


def test_wsa_without_a_stable_phase_says_what_it_needs():
    with pytest.raises(ValueError, match="stable"):
        wsa_rates({"warmup": W, "total": A})


def test_wsa_with_phases_out_of_order_is_refused():
    with pytest.raises(ValueError, match="warmup <= stable <= total"):
        wsa_rates({"warmup": W, "stable": A + 1, "total": A})


def test_wsd_warms_up_from_min_lr_ratio_holds_the_peak_then_decays_over_last_fraction():
    config = {"decay_ratio": 0.2, "min_lr_ratio": 0.1}
    rates = learning_rates(warmup_stable_decay, {"warmup": W, "total": A}, config, base_lr=1.0)
    decay_start = A - 20
    assert rates[0] == pytest.approx(0.1)
    assert rates[W // 2] == pytest.approx(0.1 + 0.5 * 0.9)
    np.testing.assert_allclose(rates[W : decay_start + 1], 1.0)
    assert rates[decay_start + 10] == pytest.approx(0.55)
    assert np.all(np.diff(rates[decay_start:]) < 0)
    assert 0.1 < rates[-1] < 0.11


def test_wsd_ignores_the_data_phases_stable_boundary():
    with_stable = {"warmup": W, "stable": S, "total": A}
    rates = learning_rates(warmup_stable_decay, with_stable, {}, base_lr=1.0)
    np.testing.assert_allclose(rates[W : A - 10 + 1], 1.0)


def test_wsd_draws_the_wsa_curve_with_matching_floor_and_boundary():
    config = {"min_lr_ratio": ETA_L / ETA_H, "decay_ratio": (A - S) / A}
    wsd = learning_rates(warmup_stable_decay, {"warmup": W, "total": A}, config, base_lr=ETA_H)
    np.testing.assert_allclose(wsd, wsa_rates(), rtol=1e-9)


def test_linear_warms_up_then_decays_linearly_to_min_lr_ratio_at_total():
    config = {"min_lr_ratio": 0.2}
    rates = learning_rates(warmup_linear, {"warmup": W, "total": A}, config, base_lr=1.0)
    assert rates[0] == pytest.approx(1 / W)
    assert rates[W - 1] == pytest.approx(1.0)
    assert rates[W] == pytest.approx(1.0)
    assert rates[(W + A) // 2] == pytest.approx(0.6)
    assert rates[-1] == pytest.approx(1 - 0.8 * (A - 1 - W) / (A - W))
    np.testing.assert_allclose(np.diff(rates[W:]), -0.8 / (A - W))


def test_cosine_warms_up_then_follows_a_cosine_to_min_lr_ratio():
    config = {"min_lr_ratio": 0.1}
    rates = learning_rates(warmup_cosine, {"warmup": W, "total": A}, config, base_lr=1.0)
    assert rates[0] == pytest.approx(1 / W)
    assert rates[W - 1] == pytest.approx(1.0)
    assert rates[W] == pytest.approx(1.0)
    assert rates[(W + A) // 2] == pytest.approx(0.55)
    assert np.all(np.diff(rates[W:]) < 0)


def llara_cosine(s: int, floor: float, warmup: int = W, total: int = A) -> float:
    """Warm-up ``(s + 1) / W``, then cosine from the peak to ``floor`` at ``total``."""
    if s < warmup:
        return (s + 1) / warmup
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))


@pytest.mark.parametrize(
    "step",
    [0, W // 2, W - 1, W, (W + A) // 2, A - 1, A],
    ids=["first", "mid-warmup", "end-of-warmup", "peak", "mid-cosine", "last", "end"],
)
def test_cosine_learning_rate_matches_the_warmup_cosine_formula(step):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-4)
    scheduler = warmup_cosine(optimizer, {"warmup": W, "total": A}, {"min_lr_ratio": 0.1})
    for _ in range(step):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(2e-4 * llara_cosine(step, 0.1), rel=1e-12)


def test_cosine_ends_at_min_lr_ratio_when_total_steps_are_taken():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = warmup_cosine(optimizer, {"warmup": W, "total": A}, {"min_lr_ratio": 0.1})
    for _ in range(A):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(0.1)


def test_constant_keeps_the_base_lr():
    np.testing.assert_allclose(learning_rates(constant, PHASES, {}, base_lr=3e-4), 3e-4)


def test_each_builtin_schedule_declares_the_config_keys_it_reads():
    assert schedule_keys(warmup_stable_annealing) == ("eta_l", "eta_h")
    assert schedule_keys(warmup_stable_decay) == ("decay_ratio", "min_lr_ratio")
    assert schedule_keys(warmup_linear) == ("min_lr_ratio",)
    assert schedule_keys(warmup_cosine) == ("min_lr_ratio",)
    assert schedule_keys(constant) == ()


def test_a_plugin_schedule_that_declares_nothing_reads_no_keys():
    assert schedule_keys(lambda optimizer, phases, config: None) == ()


def test_every_registered_schedule_gives_finite_positive_rates():
    schedulers = load_plugins().schedulers
    assert {"wsa", "wsd", "cosine", "linear", "constant"} <= set(schedulers.names())
    for name in schedulers.names():
        rates = learning_rates(schedulers.get(name), PHASES, {}, base_lr=1e-4)
        assert rates.shape == (A,), name
        assert np.all(np.isfinite(rates)) and np.all(rates > 0), name


def test_plot_schedule_writes_a_png(tmp_path):
    rates = wsa_rates()
    samples = {"warm-up": (0, W * 8), "stable": (W * 8, S * 8), "annealing": (S * 8, A * 8)}
    path = plot_schedule(tmp_path / "plots" / "wsa.png", rates, 8, samples, "WSA")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert path.stat().st_size > 1000
    assert [p.name for p in path.parent.iterdir()] == ["wsa.png"]
