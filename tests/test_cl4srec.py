"""CL4SRec on a tiny real RecBole dataset: augmentations, InfoNCE, training, prediction."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer
from recbole.utils import init_seed

from cprec_recbole.config import model_properties
from cprec_recbole.models.cl4srec import CL4SRec

N_USERS, N_INTER, N_ITEMS = 30, 8, 40
MAX_LEN = 10


def write_tiny_dataset(root: Path) -> None:
    """30 users x 8 interactions over 40 items, timestamps increasing per user."""
    gen = torch.Generator().manual_seed(0)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(N_USERS):
        items = torch.randint(1, N_ITEMS + 1, (N_INTER,), generator=gen).tolist()
        lines += [f"u{u}\ti{i}\t{t}" for t, i in enumerate(items)]
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "tiny.inter").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cl4srec")
    write_tiny_dataset(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["x"])  # RecBole's Config parses the command line
        config = Config(
            model=CL4SRec,
            dataset="tiny",
            config_file_list=[str(p) for p in model_properties("CL4SRec", CL4SRec) if p.is_file()],
            config_dict={
                "data_path": str(root),
                "checkpoint_dir": str(root / "saved"),
                "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
                "MAX_ITEM_LIST_LENGTH": MAX_LEN,
                "epochs": 1,
                "train_batch_size": 32,
                "eval_batch_size": 64,
                "hidden_size": 16,
                "inner_size": 32,
                "n_layers": 1,
                "n_heads": 2,
                "hidden_dropout_prob": 0.0,
                "attn_dropout_prob": 0.0,
                "eval_args": {
                    "split": {"LS": "valid_and_test"},
                    "order": "TO",
                    "mode": "full",
                },
                "train_neg_sample_args": None,
                "metrics": ["Recall", "NDCG"],
                "topk": [5],
                "valid_metric": "NDCG@5",
                "show_progress": False,
                "use_gpu": False,
                "seed": 2020,
            },
        )
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return {
        "root": root,
        "config": config,
        "dataset": dataset,
        "train": train_data,
        "valid": valid_data,
        "test": test_data,
    }


@pytest.fixture
def model(env: dict) -> CL4SRec:
    torch.manual_seed(0)
    return CL4SRec(env["config"], env["train"]._dataset)


def random_batch(
    n_items: int, batch: int = 64, length: int = MAX_LEN
) -> tuple[torch.Tensor, torch.Tensor]:
    """End-padded item sequences with lengths 1..length, items in 1..n_items-1."""
    gen = torch.Generator().manual_seed(1)
    seq_len = torch.randint(1, length + 1, (batch,), generator=gen)
    seq = torch.randint(1, n_items, (batch, length), generator=gen)
    seq = seq.masked_fill(torch.arange(length) >= seq_len.unsqueeze(1), 0)
    return seq, seq_len


def padding_of(seq: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
    return torch.arange(seq.size(1)) >= seq_len.unsqueeze(1)


# ---------------------------------------------------------------- augmentations


def test_reorder_keeps_the_items_of_each_sequence(model: CL4SRec) -> None:
    seq, seq_len = random_batch(model.n_items)
    out, out_len = model.item_reorder(seq, seq_len)
    assert torch.equal(out_len, seq_len)
    assert torch.equal(out.sort(dim=1).values, seq.sort(dim=1).values)
    assert (out[padding_of(seq, seq_len)] == 0).all()
    for s, o, n in zip(seq, out, seq_len.tolist()):
        changed = (s != o).nonzero().flatten()
        if len(changed):  # only a contiguous window of floor(beta*len) items moves
            assert changed.max() - changed.min() + 1 <= math.floor(model.beta * n)
    assert not torch.equal(out, seq)


def test_crop_keeps_a_contiguous_window_of_eta_len_items(model: CL4SRec) -> None:
    seq, seq_len = random_batch(model.n_items)
    out, out_len = model.item_crop(seq, seq_len)
    expected_len = torch.clamp((model.eta * seq_len).floor().long(), min=1)
    assert torch.equal(out_len, expected_len)
    assert (out[padding_of(out, out_len)] == 0).all()
    for s, o, n, c in zip(seq.tolist(), out.tolist(), seq_len.tolist(), out_len.tolist()):
        windows = [s[start : start + c] for start in range(n - c + 1)]
        assert o[:c] in windows


def test_mask_replaces_gamma_len_valid_items_by_the_mask_token(model: CL4SRec) -> None:
    seq, seq_len = random_batch(model.n_items)
    out, out_len = model.item_mask(seq, seq_len)
    is_mask = out == model.mask_token_id
    assert model.mask_token_id == model.n_items
    assert torch.equal(out_len, seq_len)
    assert torch.equal(is_mask.sum(dim=1), (model.gamma * seq_len).floor().long())
    assert not is_mask[padding_of(seq, seq_len)].any()
    assert torch.equal(out[~is_mask], seq[~is_mask])


def test_augment_picks_one_of_the_three_augmentations_per_sequence(
    model: CL4SRec,
) -> None:
    seq, seq_len = random_batch(model.n_items, batch=256)
    torch.manual_seed(3)
    out, out_len = model.augment(seq, seq_len)
    cropped = out_len != seq_len
    masked = (out == model.mask_token_id).any(dim=1)
    reordered = ~cropped & ~masked & (out != seq).any(dim=1)
    assert cropped.any() and masked.any() and reordered.any()
    assert not (cropped & masked).any()
    assert (out[padding_of(out, out_len)] == 0).all()
    assert ((out_len >= 1) & (out_len <= seq_len)).all()


# ---------------------------------------------------------------- InfoNCE


def slow_info_nce(z_i: torch.Tensor, z_j: torch.Tensor, tau: float, sim: str) -> torch.Tensor:
    """Textbook NT-Xent, one anchor at a time."""
    z = torch.cat([z_i, z_j])
    n, b = len(z), len(z_i)

    def s(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return (a @ c if sim == "dot" else torch.cosine_similarity(a, c, dim=0)) / tau

    losses = []
    for k in range(n):
        pos = (k + b) % n
        denom = sum(torch.exp(s(z[k], z[m])) for m in range(n) if m != k)
        losses.append(-torch.log(torch.exp(s(z[k], z[pos])) / denom))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("sim", ["dot", "cos"])
def test_info_nce_matches_the_reference_formula(model: CL4SRec, sim: str) -> None:
    model.sim, model.tau = sim, 0.7
    gen = torch.Generator().manual_seed(0)
    z_i, z_j = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    expected = slow_info_nce(z_i.double(), z_j.double(), 0.7, sim)
    assert torch.allclose(model.info_nce(z_i, z_j).double(), expected, atol=1e-5)


@pytest.mark.parametrize("sim", ["dot", "cos"])
def test_info_nce_is_lower_for_identical_views_than_for_random_ones(
    model: CL4SRec, sim: str
) -> None:
    model.sim = sim
    gen = torch.Generator().manual_seed(0)
    z_i, z_j = torch.randn(32, 16, generator=gen), torch.randn(32, 16, generator=gen)
    assert model.info_nce(z_i, z_i) < model.info_nce(z_i, z_j)


# ---------------------------------------------------------------- training and prediction


def test_one_epoch_of_training_runs(
    env: dict, model: CL4SRec, monkeypatch: pytest.MonkeyPatch
) -> None:
    # recbole's Trainer writes log_tensorboard/ into the cwd
    monkeypatch.chdir(env["root"])
    trainer = Trainer(env["config"], model)
    best_score, _ = trainer.fit(env["train"], env["valid"], saved=False, show_progress=False)
    assert math.isfinite(trainer.train_loss_dict[0])
    assert math.isfinite(best_score)


def test_loss_decreases_on_a_fixed_batch(env: dict, model: CL4SRec) -> None:
    batch = next(iter(env["train"]))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(15):
        torch.manual_seed(0)  # same augmentations every step, so the objective is fixed
        loss = model.calculate_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_full_sort_predict_scores_every_item_but_not_the_mask_token(
    env: dict, model: CL4SRec
) -> None:
    model.eval()
    interaction = next(iter(env["test"]))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        point_scores = model.predict(interaction)
    assert scores.shape == (len(interaction), env["dataset"].item_num)
    assert model.n_items == env["dataset"].item_num
    assert point_scores.shape == (len(interaction),)


def test_mask_token_has_a_learnable_embedding(model: CL4SRec) -> None:
    seq, seq_len = random_batch(model.n_items, batch=8)
    masked, _ = model.item_mask(seq, seq_len)
    model.forward(masked, seq_len).sum().backward()
    assert model.item_embedding.mask_vector.grad.abs().sum() > 0
    assert model.item_embedding.weight.shape[0] == model.n_items
