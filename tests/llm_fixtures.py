"""A tiny real Llama and a tokenizer trained in code, for fast LLM tests (no downloads).

Import the fixtures into a test module by their function names (``tiny_tokenizer_fixture``...);
tests request them by fixture name (``tiny_tokenizer``), so the import does not shadow arguments.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from cprec_recbole.builtin.prompt_templates import LLARA_HYBRID, LLARA_TEXT, SENTENCE
from cprec_recbole.config import PROPERTIES, read_yaml
from cprec_recbole.llm.backbone import add_special_tokens, load_backbone
from cprec_recbole.llm.batching import LLMSample
from cprec_recbole.plugins import load_plugins

TITLES = {
    "i0": "Red Castle",
    "i1": "Blue River Saga",
    "i2": "Green Hills",
    "i3": "Silent Moon",
    "i4": "Iron Forge Tactics",
    "i5": "Golden Harbor",
    "i6": "Crystal Caves",
    "i7": "Storm Riders",
    "i8": "Hidden Valley",
    "i9": "Paper Planes",
    "i10": "Night Market",
    "i11": "Frozen Lake",
}
ITEM_INDEX = {item: row for row, item in enumerate(TITLES)}
TEMPLATE_TOKENS = list(dict.fromkeys(LLARA_HYBRID.special_tokens + LLARA_TEXT.special_tokens))


CORPUS = [SENTENCE, "game item movie"] + [f" {t}\n" for t in TITLES.values()] * 3
#: LoRA settings as properties/ declares them (the code holds no defaults of its own).
LORA_DEFAULTS = {
    k: v
    for k, v in read_yaml(PROPERTIES / "model" / "LLMRecommender.yaml").items()
    if k.startswith("lora_")
}
CONFIG = {
    **LORA_DEFAULTS,
    "llm_backbone": "tiny-random",
    "seed": 0,
    "dtype": "fp32",
    "device": "cpu",
}


def tiny_backbone() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The tiny-random backbone on the fixture titles, with the LLaRA placeholder tokens."""
    model, tokenizer = load_backbone(CONFIG, load_plugins(), CORPUS)
    add_special_tokens(model, tokenizer, TEMPLATE_TOKENS)
    return model, tokenizer


def samples(n: int = 4, n_candidates: int = 5) -> list[LLMSample]:
    """Distinct users with histories of 2-4 items and ``n_candidates`` candidates."""
    items = list(TITLES)
    out = []
    for u in range(n):
        history = [items[(u + k) % len(items)] for k in range(2 + u % 3)]
        candidates = [items[(u * 3 + 5 + k) % len(items)] for k in range(n_candidates)]
        out.append(LLMSample(f"u{u}", history, candidates, candidates[(u * 2 + 1) % n_candidates]))
    return out


@pytest.fixture(scope="session", name="tiny_tokenizer")
def tiny_tokenizer_fixture() -> PreTrainedTokenizerFast:
    return tiny_backbone()[1]


@pytest.fixture(name="tiny_model")
def tiny_model_fixture() -> LlamaForCausalLM:
    return tiny_backbone()[0]


@pytest.fixture(name="one_thread")
def one_thread_fixture():
    """Tiny models run several times faster on one thread than on two busy shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
