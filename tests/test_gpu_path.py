"""The GPU path, checked on the CPU: one backbone load per run, fp32 trainable weights on a bf16
backbone, gradient checkpointing, adapters without embedding matrices, fp16 refused (test_config,
test_backbone), and answers tokenized right for SentencePiece-style tokenizers (LLaMA's)."""

from __future__ import annotations

import pytest
import torch
from llm_fixtures import (  # noqa: F401  (pytest fixtures)
    CONFIG,
    CORPUS,
    TITLES,
    samples,
    tiny_backbone,
    tiny_tokenizer_fixture,
)
from safetensors.torch import load_file
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from cprec_recbole.builtin.prompt_templates import LLARA_TEXT, UNIFIED
from cprec_recbole.command import setup
from cprec_recbole.llm.backbone import (
    BackboneError,
    add_lora,
    add_special_tokens,
    keep_backbone,
    load_backbone,
    load_kwargs,
    load_pretrained,
)
from cprec_recbole.llm.batching import RenderContext, answer_ids, encode_batch
from cprec_recbole.llm.loop import ADAPTER, load_adapter, save_adapter
from cprec_recbole.llm.losses import answer_loss
from cprec_recbole.llm.prompts import answer_text, render
from cprec_recbole.llm.scoring import candidate_scores
from cprec_recbole.pipeline import run_pipeline
from cprec_recbole.quick_start import run
from tests.test_cpt import cpt_overrides  # noqa: F401  (the fixture, read by name)

COUNTING_BACKBONE = """
from pathlib import Path

from cprec_recbole.hookspecs import hookimpl

LOG = Path({log!r})


def load_counted(config, corpus=()):
    from cprec_recbole.llm.backbone import load_tiny_random

    with LOG.open("a") as log:
        log.write("load\\n")
    return load_tiny_random(config, CORPUS)


load_counted.reads_corpus = False  # its own corpus: the same base for CPT and SFT
CORPUS = [
    "This user has bought in the previous. Please predict the next item this user will buy.",
    *(f"Title of {{shop}}{{i}}" for shop in ("ShopA", "ShopB", "i") for i in range(30)),
]


@hookimpl
def register_backbones(register):
    register("tiny-counted", load_counted)
"""


def test_a_cprec_run_reads_its_backbone_once_and_sft_on_the_kept_base_matches_a_fresh_load(
    request, tmp_path
):
    log = tmp_path / "loads.txt"
    plugin = tmp_path / "counted_backbone.py"
    plugin.write_text(COUNTING_BACKBONE.format(log=str(log)))
    overrides = {**request.getfixturevalue("cpt_overrides"), "llm_backbone": "tiny-counted"}
    overrides["profile"] = "tiny"  # auto picks it by the name tiny-random only
    shared = run("CPRec", "Tiny", overrides=overrides, plugin_files=[plugin])
    assert log.read_text().splitlines() == ["load"]  # CPT, SFT and eval: one load
    fresh = run("CPRec", "Tiny", overrides=overrides, plugin_files=[plugin], force=["sft", "eval"])
    assert len(log.read_text().splitlines()) == 2  # CPT cached: SFT loads the base itself
    assert fresh["test"] == shared["test"] and fresh["valid"] == shared["valid"]


def tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    """A small Llama built here (not through load_backbone) for a tokenizer's vocabulary."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config).eval()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_kept_base_is_handed_out_once_as_loaded_without_lora(plugins):
    model, tokenizer = load_backbone(CONFIG, plugins, CORPUS)
    ids = tokenizer(["Red Castle"], return_tensors="pt")["input_ids"]
    before = logits(model, ids)
    lora = add_lora(model, {**CONFIG, "gradient_checkpointing": True})
    with torch.no_grad():  # as trained: every adapter non-zero
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.fill_(0.1)
    keep_backbone(lora.unload(), tokenizer)
    again, same_tokenizer = load_backbone(CONFIG, plugins, CORPUS)
    modules = list(again.modules())
    assert again is model and same_tokenizer is tokenizer
    assert not again.training and not any(getattr(m, "gradient_checkpointing", 0) for m in modules)
    assert all(p.requires_grad for p in again.parameters())
    assert not any("lora" in name for name, _ in again.named_modules())
    assert torch.equal(logits(again, ids), before)
    assert load_backbone(CONFIG, plugins, CORPUS)[0] is not model  # handed out once only


def test_a_base_of_another_corpus_is_not_reused_and_a_foreign_model_is_not_kept(plugins):
    model, tokenizer = load_backbone(CONFIG, plugins, CORPUS)
    keep_backbone(model, tokenizer)
    assert load_backbone(CONFIG, plugins, [*CORPUS, "New Title"])[0] is not model
    assert load_backbone(CONFIG, plugins, CORPUS)[0] is not model  # dropped by the other load
    with pytest.raises(BackboneError, match="was not loaded here"):
        keep_backbone(tiny_llama(len(tokenizer)), tokenizer)


def test_weights_go_straight_to_a_gpu_when_one_is_configured():
    kwargs = load_kwargs(torch.bfloat16, torch.device("cuda:1"))
    assert kwargs["device_map"] == {"": "cuda:1"}
    assert "device_map" not in load_kwargs(torch.float32, torch.device("cpu"))


def test_lora_and_projector_train_in_fp32_on_a_bf16_backbone(tiny_sft):
    overrides = {**tiny_sft, "dtype": "bf16", "rec_model_overrides": {"epochs": 1}}
    config, plugins, _ = setup("LLaRA", "Tiny", overrides=overrides)
    recommender = run_pipeline("LLaRA", config, plugins, until="sasrec").recommender()
    model, _, ctx = recommender.load()
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}
    assert {p.dtype for p in ctx.projector.parameters()} == {torch.float32}


def lora_gradients(checkpointing: bool) -> tuple[float, dict]:
    model, tokenizer = tiny_backbone()
    torch.manual_seed(0)
    model = add_lora(
        model, {**CONFIG, "lora_dropout": 0.1, "gradient_checkpointing": checkpointing}
    )
    model.train()
    batch = encode_batch(
        tokenizer,
        LLARA_TEXT,
        samples(),
        TITLES,
        {},
        "game",
        with_answer=True,
        hybrid=False,
        text_template=LLARA_TEXT,
    )
    torch.manual_seed(1)  # the same dropout masks; checkpointing replays them in backward
    loss = answer_loss(model, batch, None, None)
    assert checkpointing == any(getattr(m, "gradient_checkpointing", 0) for m in model.modules())
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_gradient_checkpointing_changes_no_loss_and_no_gradient():
    plain_loss, plain = lora_gradients(False)
    loss, checkpointed = lora_gradients(True)
    assert loss == plain_loss and plain.keys() == checkpointed.keys()
    assert all(torch.equal(plain[n], checkpointed[n]) for n in plain)


def test_adapters_leave_out_the_embeddings_that_added_tokens_resized(plugins, tmp_path):
    base, tokenizer = load_backbone(CONFIG, plugins, CORPUS)
    base.save_pretrained(tmp_path / "base")  # a base with a config.json, as hub models have
    tokenizer.save_pretrained(tmp_path / "base")

    def wrapped():
        model, tok = load_pretrained(str(tmp_path / "base"), CONFIG, "test base")
        add_special_tokens(model, tok, ["[HistoryEmb]", "[CansEmb]", "[PH]"])
        torch.manual_seed(0)
        return add_lora(model, CONFIG), tok

    model, tok = wrapped()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    save_adapter(model, tmp_path / ADAPTER)
    saved = load_file(str(tmp_path / ADAPTER / "adapter_model.safetensors"))
    assert saved and all("lora_" in key for key in saved)  # no embed_tokens, no lm_head
    reloaded, _ = wrapped()
    load_adapter(reloaded, tmp_path / ADAPTER)
    ids = tok(["Red Castle [PH]"], return_tensors="pt")["input_ids"]
    assert torch.equal(logits(reloaded.eval(), ids), logits(model.eval(), ids))


# ------------------------------------------------------------------ SentencePiece-style tokens
def sentencepiece_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """A BPE laid out as LLaMA-2's tokenizer.json: "▁" prepended to the text and spaces turned
    into "▁" by the normalizer, no pre-tokenizer, the decoder undoing both; learned on words
    (as SentencePiece learns them), so no token spans two words."""
    sp = Tokenizer(models.BPE(unk_token="<unk>"))
    sp.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    sp.train_from_iterator(corpus, trainer=trainer)
    sp.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    sp.pre_tokenizer = None
    sp.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    sp.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", sp.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=sp,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        padding_side="left",
    )


SP_CORPUS = [UNIFIED.text, *(answer_text(t) for t in TITLES.values())] * 3


@pytest.fixture(scope="module", name="sp_tokenizer")
def sp_tokenizer_fixture() -> PreTrainedTokenizerFast:
    return sentencepiece_tokenizer(SP_CORPUS)


def test_answers_lose_the_stray_marker_sentencepiece_puts_before_them_and_bpe_ids_stay(
    sp_tokenizer, tiny_tokenizer
):
    alone = sp_tokenizer(" Red Castle\n", add_special_tokens=False)["input_ids"]
    assert sp_tokenizer.convert_ids_to_tokens(alone)[:2] == ["▁", "▁Red"]  # as LLaMA-2 does
    assert answer_ids(sp_tokenizer, [" Red Castle\n"]) == [alone[1:]]
    answers = [answer_text(t) for t in TITLES.values()]  # byte-level BPE: as tokenized alone
    assert (
        answer_ids(tiny_tokenizer, answers)
        == tiny_tokenizer(answers, add_special_tokens=False)["input_ids"]
    )


@pytest.mark.parametrize("kind", ["sentencepiece", "byte-level BPE"])
def test_trained_and_scored_answer_tokens_are_those_of_prompt_and_answer_as_one_text(
    kind, sp_tokenizer, tiny_tokenizer
):
    tokenizer = sp_tokenizer if kind == "sentencepiece" else tiny_tokenizer
    model = tiny_llama(len(tokenizer))
    sample = samples(1)[0]
    prompt = render(
        UNIFIED, [TITLES[i] for i in sample.history], [TITLES[i] for i in sample.candidates], "item"
    )
    whole = tokenizer(prompt + answer_text(TITLES[sample.target]))["input_ids"]
    n_prompt = len(tokenizer(prompt)["input_ids"])
    assert whole[:n_prompt] == tokenizer(prompt)["input_ids"]  # the boundary is a token boundary
    batch = encode_batch(tokenizer, UNIFIED, [sample], TITLES, {}, "item", with_answer=True)
    assert batch.input_ids[0].tolist() == whole  # what the loss trains on
    assert batch.labels[0, n_prompt:].tolist() == whole[n_prompt:]
    with torch.no_grad():
        log_probs = model(torch.tensor([whole])).logits[0, n_prompt - 1 : -1].log_softmax(-1)
        expected = log_probs.gather(1, torch.tensor(whole[n_prompt:])[:, None]).mean()
        loss = answer_loss(model, batch, None, None)
        ctx = RenderContext(UNIFIED, TITLES, {}, "item", {"score_rule": "mean"})
        prompts = encode_batch(tokenizer, UNIFIED, [sample], TITLES, {}, "item", False)
        scores = candidate_scores(model, tokenizer, [sample], ctx, prompts)
    target = sample.candidates.index(sample.target)
    torch.testing.assert_close(-loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores[target], expected, rtol=1e-5, atol=1e-5)
