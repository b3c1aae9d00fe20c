"""A tiny real Llama and a tokenizer trained in code, for fast LLM tests (no downloads).

Import the fixtures into a test module by their function names (``tiny_tokenizer_fixture``...);
tests request them by fixture name (``tiny_tokenizer``), so the import does not shadow arguments.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from cprec_recbole.builtin.prompt_templates import LLARA_HYBRID, LLARA_TEXT, SENTENCE
from cprec_recbole.llm.batching import LLMSample

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
SPECIAL = ["<s>", "</s>", "<pad>", "<unk>"]
TEMPLATE_TOKENS = list(dict.fromkeys(LLARA_HYBRID.special_tokens + LLARA_TEXT.special_tokens))


def train_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE on the prompt sentence and the titles; BOS prepended like Llama."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [SENTENCE, "game item movie"] + [f" {t}\n" for t in TITLES.values()] * 3
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.add_special_tokens({"additional_special_tokens": TEMPLATE_TOKENS})
    return fast


def tiny_llama(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """hidden 64, 2 layers, fp32: real attention, rotary positions and KV cache in milliseconds."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


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
    return train_tokenizer()


@pytest.fixture(name="tiny_model")
def tiny_model_fixture(tiny_tokenizer) -> LlamaForCausalLM:
    return tiny_llama(tiny_tokenizer)


@pytest.fixture(name="one_thread")
def one_thread_fixture():
    """Tiny models run several times faster on one thread than on two busy shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
