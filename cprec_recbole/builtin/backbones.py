"""Built-in LLM backbones: llama2-7b (the paper's), smollm2-135m (offline default), tiny-random.

The loaders live in ``cprec_recbole.llm.backbone``; they are wrapped here so that loading plugins
(done by every command, ID models included) does not import transformers and peft.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cprec_recbole.hookspecs import hookimpl

BUILTIN_BACKBONES = {
    "llama2-7b": "load_llama2_7b",
    "smollm2-135m": "load_smollm2_135m",
    "tiny-random": "load_tiny_random",
}
#: Loaders whose result depends on the corpus they are given (tiny-random trains its tokenizer).
CORPUS_READERS = ("load_tiny_random",)


def _lazy(function_name: str) -> Callable[[dict, Sequence[str]], Any]:
    def loader(config: dict, corpus: Sequence[str] = ()) -> Any:
        from cprec_recbole.llm import backbone

        return getattr(backbone, function_name)(config, corpus)

    loader.__name__ = loader.__qualname__ = function_name
    loader.reads_corpus = function_name in CORPUS_READERS  # the others share one load per run
    loader.__doc__ = f"Calls cprec_recbole.llm.backbone.{function_name} (imported on first use)."
    return loader


@hookimpl
def register_backbones(register):
    for name, function_name in BUILTIN_BACKBONES.items():
        register(name, _lazy(function_name))
