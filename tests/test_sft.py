"""SFT objectives on the tiny-random backbone: LLaRA's answer loss and the listwise one."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from llm_fixtures import (  # noqa: F401  (pytest fixtures)
    ITEM_INDEX,
    LORA_DEFAULTS,
    TITLES,
    one_thread_fixture,
    samples,
    tiny_backbone,
    tiny_model_fixture,
    tiny_tokenizer_fixture,
)
from peft import PeftModel
from safetensors.torch import load_file

from cprec_recbole.builtin.prompt_templates import LLARA_HYBRID
from cprec_recbole.errors import ConfigError
from cprec_recbole.llm.backbone import add_lora
from cprec_recbole.llm.batching import RenderContext, encode_batch
from cprec_recbole.llm.inference import candidate_log_likelihoods, output_metrics, score
from cprec_recbole.llm.losses import answer_loss, listwise_loss
from cprec_recbole.llm.projector import Projector, embed_batch
from cprec_recbole.llm.scoring import check_item_token_score
from cprec_recbole.llm.sft import (
    PROJECTOR,
    WARMUP,
    SFTSetup,
    SFTTrainer,
    objective_weights,
    save_fine_tuned,
    sft_loss,
    warmup_plan,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def hybrid_context(model) -> RenderContext:
    torch.manual_seed(0)
    config = {"show_progress": False, "eval_batch_users": 4, "score_rule": "mean"}
    return RenderContext(
        LLARA_HYBRID,
        TITLES,
        ITEM_INDEX,
        "game",
        config,
        torch.randn(len(TITLES), 8),
        Projector(8, model.config.hidden_size),
    )


def setup_for(tokenizer, ctx: RenderContext, users, plugins) -> SFTSetup:
    """Train and validate on the same users, every prompt hybrid (no curriculum)."""
    return SFTSetup(
        tokenizer,
        LLARA_HYBRID,
        None,
        ctx,
        lambda epoch: users,
        lambda model: output_metrics(score(model, tokenizer, users, ctx), users, [1, 3]),
        plugins.schedulers.get("constant"),
    )


def sft_config(**objective) -> dict:
    return {
        "micro_batch_size": 4,
        "train_batch_size": 4,
        "seed": 0,
        "epochs": 40,  # listwise on this toy: every positive first from ~epoch 22
        "learning_rate": 3e-3,
        "projector_decay": 0.0,
        "warmup_ratio": 0.0,
        "checkpoint_every": None,
        "show_progress": False,
        "max_grad_norm": None,
        "autocast": False,
        "compile": False,
        "stopping_step": 60,
        "sparsity_buckets": [1, 3],
        "sft_objective": "answer",
        "sft_objective_mix": 0.5,
        "projector_warmup_samples": 0,
        **objective,
    }


def test_listwise_loss_is_the_cross_entropy_of_the_scores_that_score_ranks_by(
    tiny_tokenizer, tiny_model
):
    users = samples(3, n_candidates=6)
    users[1] = replace(users[1], candidates=users[1].candidates[:4])  # unequal candidate counts
    ctx = hybrid_context(tiny_model)
    prompts = encode_batch(tiny_tokenizer, LLARA_HYBRID, users, TITLES, ITEM_INDEX, "game", False)
    loss = listwise_loss(tiny_model, tiny_tokenizer, users, prompts, ctx)
    scores = candidate_log_likelihoods(tiny_model, tiny_tokenizer, users, ctx)
    expected = torch.stack(
        [
            torch.nn.functional.cross_entropy(s, torch.tensor(u.candidates.index(u.target)))
            for u, s in zip(users, scores, strict=True)
        ]
    ).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()  # gradients reach the projector through the candidates' scores
    assert ctx.projector.net[0].weight.grad.abs().sum() > 0


def test_answer_objective_is_exactly_the_answer_loss_and_mix_weights_both(
    tiny_tokenizer, tiny_model, plugins
):
    users = samples(3, n_candidates=5)
    ctx = hybrid_context(tiny_model)
    setup = setup_for(tiny_tokenizer, ctx, users, plugins)
    answers = encode_batch(tiny_tokenizer, LLARA_HYBRID, users, TITLES, ITEM_INDEX, "game", True)
    prompts = encode_batch(tiny_tokenizer, LLARA_HYBRID, users, TITLES, ITEM_INDEX, "game", False)
    tiny_model.eval()  # no dropout: each loss is computed twice
    answer = answer_loss(tiny_model, answers, ctx.item_embeddings, ctx.projector)
    listwise = listwise_loss(tiny_model, tiny_tokenizer, users, prompts, ctx)

    def loss(**objective) -> torch.Tensor:
        return sft_loss(tiny_model, setup, users, True, objective_weights(sft_config(**objective)))

    assert torch.equal(loss(sft_objective="answer"), answer)
    assert torch.equal(loss(sft_objective="listwise"), listwise)
    mixed = loss(sft_objective="mix", sft_objective_mix=0.25)
    torch.testing.assert_close(mixed, 0.75 * answer + 0.25 * listwise)
    assert objective_weights(sft_config(sft_objective="mix", sft_objective_mix=0.0)) == {
        "answer": 1.0,
        "listwise": 0.0,
    }


def test_an_unknown_objective_fails_before_training_naming_the_key(
    tiny_tokenizer, tiny_model, plugins, tmp_path
):
    ctx = hybrid_context(tiny_model)
    setup = setup_for(tiny_tokenizer, ctx, samples(2), plugins)
    with pytest.raises(ValueError, match="sft_objective: 'foo' is not one of answer, listwise"):
        SFTTrainer(tiny_model, ctx.projector, setup, sft_config(sft_objective="foo"), tmp_path)


def test_listwise_sft_ranks_every_memorised_positive_first(
    tiny_tokenizer, tiny_model, plugins, tmp_path
):
    users = samples(4, n_candidates=8)
    ctx = hybrid_context(tiny_model)
    setup = setup_for(tiny_tokenizer, ctx, users, plugins)
    config = sft_config(sft_objective="listwise")
    assert score(tiny_model, tiny_tokenizer, users, ctx).ranks.tolist() != [0] * len(users)
    metrics = SFTTrainer(tiny_model, ctx.projector, setup, config, tmp_path).train()
    assert metrics["best_valid"]["hr@1"] == 1.0
    out = score(tiny_model, tiny_tokenizer, users, ctx)  # the best state, as training ends
    assert out.ranks.tolist() == [0] * len(users)


def test_item_token_scores_learn_a_ranking_that_identical_titles_cannot_express(
    tiny_tokenizer, tiny_model, plugins, tmp_path
):
    users = samples(4, n_candidates=8)
    ctx = replace(hybrid_context(tiny_model), titles=dict.fromkeys(TITLES, "Game"))
    ties = score(tiny_model, tiny_tokenizer, users, ctx).ranks.tolist()
    assert ties == [7] * len(users)  # equal titles tie, and ties count against the positive
    ctx = replace(ctx, config={**ctx.config, "item_token_score": True})
    setup = setup_for(tiny_tokenizer, ctx, users, plugins)
    # every positive first from epoch 33 of 60 here
    config = sft_config(
        sft_objective="listwise", item_token_score=True, learning_rate=1e-2, epochs=60
    )
    metrics = SFTTrainer(tiny_model, ctx.projector, setup, config, tmp_path).train()
    assert metrics["best_valid"]["hr@1"] == 1.0
    assert score(tiny_model, tiny_tokenizer, users, ctx).ranks.tolist() == [0] * len(users)


def test_item_token_score_needs_embeddings_a_listwise_loss_and_scoring():
    ok = {"item_token_score": True, "sft_objective": "mix", "valid_inference": "score"}
    check_item_token_score({**ok, "item_token_score": False, "sft_objective": "answer"}, False)
    check_item_token_score(ok, True)
    with pytest.raises(ConfigError, match="item_token_score: true needs item embeddings"):
        check_item_token_score(ok, False)
    with pytest.raises(ConfigError, match="set sft_objective=listwise or mix"):
        check_item_token_score({**ok, "sft_objective": "answer"}, True)
    with pytest.raises(ConfigError, match="valid_inference=generate never computes"):
        check_item_token_score({**ok, "valid_inference": "generate"}, True)


def test_the_warmup_plan_takes_seeded_rounds_of_every_sample():
    plan = warmup_plan(4, 10, micro=2, accumulate=2, seed=0)
    ids = [i for step in plan.steps for micro in step for i in micro]
    assert len(ids) == 10 and sorted(ids[:4]) == sorted(ids[4:8]) == [0, 1, 2, 3]
    assert plan.checkpoints == {len(plan.steps): ["done"]} and len(plan.steps) == 3
    assert warmup_plan(4, 10, 2, 2, seed=0).steps == plan.steps != warmup_plan(4, 10, 2, 2, 1).steps


def test_projector_warmup_trains_the_projector_alone_and_a_rerun_reuses_it(
    tiny_tokenizer, tiny_model, plugins, tmp_path
):
    users = samples(4, n_candidates=6)
    model = add_lora(tiny_model, {**LORA_DEFAULTS, "lora_r": 4, "lora_alpha": 8})
    ctx = hybrid_context(model)
    setup = setup_for(tiny_tokenizer, ctx, users, plugins)
    config = sft_config(sft_objective="listwise", projector_warmup_samples=12)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.eval()  # dropout off for the two scorings

    def scores() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(candidate_log_likelihoods(model, tiny_tokenizer, users, ctx))

    before = scores()
    projector = {k: v.clone() for k, v in ctx.projector.state_dict().items()}
    out = SFTTrainer(model, ctx.projector, setup, config, tmp_path).warm_up()
    assert out["samples_done"] == 12 and out["steps_done"] == 3
    for name, param in model.named_parameters():  # LoRA included: trained nothing
        assert torch.equal(param, frozen[name]) and param.grad is None, name
    trained = {k: v.clone() for k, v in ctx.projector.state_dict().items()}
    assert not torch.equal(trained["net.0.weight"], projector["net.0.weight"])
    model.eval()
    assert not torch.allclose(scores(), before)  # the candidates' scores moved: embeddings
    assert (tmp_path / WARMUP / "checkpoints" / "done").is_dir()

    ctx.projector.load_state_dict(projector)  # a rerun in a new process: untrained projector
    again = SFTTrainer(model, ctx.projector, setup, config, tmp_path).warm_up()
    assert again["resumed_at_samples"] == 12  # nothing retrained
    for key, value in ctx.projector.state_dict().items():
        assert torch.equal(value, trained[key]), key


def test_the_sft_artifact_is_a_peft_adapter_that_from_pretrained_loads_to_the_same_logits(
    tiny_tokenizer, tiny_model, plugins, tmp_path
):
    users = samples(4)
    model = add_lora(
        tiny_model, {**LORA_DEFAULTS, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    )
    ctx = hybrid_context(model)
    setup = setup_for(tiny_tokenizer, ctx, users, plugins)
    SFTTrainer(model, ctx.projector, setup, sft_config(epochs=2), tmp_path).train()
    save_fine_tuned(tmp_path, model, ctx.projector)
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    base, _ = tiny_backbone()  # a fresh backbone with the same special tokens
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    projector = Projector(8, base.config.hidden_size)
    projector.load_state_dict(load_file(tmp_path / PROJECTOR))
    batch = encode_batch(tiny_tokenizer, LLARA_HYBRID, users, TITLES, ITEM_INDEX, "game", True)

    def logits(net, proj) -> torch.Tensor:
        net.eval()
        embeds = embed_batch(net, batch, ctx.item_embeddings, proj)
        return net(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits

    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in trained)  # the adapters learned something
    with torch.no_grad():
        assert torch.equal(logits(loaded, projector), logits(model, ctx.projector))
