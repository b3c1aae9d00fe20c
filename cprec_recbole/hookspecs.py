"""Every hook a cprec_recbole plugin can implement.

A plugin is a module (or object) with functions decorated by ``@cprec_recbole.hookimpl`` whose
names match the specs below; load it with ``--plugin=path.py``, the ``plugins:`` config key, or an
entry point in group ``cprec_recbole``. Each hook receives a ``register`` callable; call it once per
thing the plugin adds: ``register(name, thing)``. Names are global per kind: registering a name
that another plugin already registered is an error that names both plugins. Built-ins are
registered through these same hooks (see ``cprec_recbole/builtin/``), so a plugin can do
everything they do; ``plugins/`` holds examples to copy. Hooks run whenever plugins load (every
command), so keep heavy imports inside the registered objects.

A config key that only a plugin reads must be named somewhere the config check sees (a model's
properties YAML, a schedule's ``reads``) or listed in ``extra_keys``; other unknown keys are errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("cprec_recbole")
hookimpl = pluggy.HookimplMarker("cprec_recbole")
Register = Callable[[str, Any], None]


@hookspec
def register_models(register: Register) -> None:
    """Add recommender models: ``register("SASRec", cls)``; ``--model=SASRec`` picks one.

    ``cls.pipeline`` names the steps the model runs, in order (``cprec_recbole.pipeline.STEPS``;
    each builds or reuses one cached stage from the folders before it; ``--force=STAGE`` redoes
    one, ``--plan`` lists them). The last step writes ``results.json`` (``valid`` and ``test``
    metric dicts, as ``cprec_recbole.results.write_results`` writes them); ``--tune`` compares
    the valid metrics of the last step that has them (``rec_model`` or ``sft``), so a model
    whose pipeline has neither cannot be tuned. Two kinds:

    - a RecBole ``SequentialRecommender`` subclass: pipeline ``("data", "rec_model")`` unless
      it declares one (``("data", "item_text", "rec_model")`` gives it the ``item_text`` stage:
      ``config["item_text_folder"]``); the ID stage trains it with RecBole's trainer and scores
      it on the persisted candidate sets, so it must implement ``predict``/``full_sort_predict``.
    - a subclass of ``cprec_recbole.llm.pipeline.LLMRecommender``, whose pipeline is a subset of
      ``("data", "sasrec", "corpus", "cpt", "sft", "eval")`` in that order: ``sasrec`` gives
      hybrid prompts the item embeddings of the ID model ``embedding_model`` (SASRec; one
      whose item vectors are computed says how with ``item_table(state_dict)``, as MoRec),
      ``cpt`` starts LoRA from continual pre-training, ``sft`` fine-tunes LoRA (+ projector)
      and validates, ``eval`` ranks the test candidates.
      ``cls(config, data, plugins, folders)`` builds the object from those stages' folders and
      trains nothing; override its methods (``load``, ``train_windows``, ``epoch_samples``, ...)
      to change what the stages do; a key they read that the stage does not declare must join
      ``declared()["extra_reads"]`` (the stage refuses the read otherwise: its hash would miss it).

    Defaults: ``properties/model/<name>.yaml`` for the name and each base class, then the YAML
    file at ``cls.properties``; each key a user may set needs a default there.
    """


@hookspec
def register_domains(register: Register) -> None:
    """Add data domains: ``register("Game", domain)``; ``--dataset`` and ``cpt_domains`` pick them.

    ``domain.load(config) -> (interactions, items)``, raw data as two DataFrames: ``user_id``,
    ``item_id`` (str, no whitespace), ``timestamp`` (float), rows in any order (the toolkit sorts
    stably by (user_id, timestamp), so ties keep load order); and ``item_id``, ``title`` (str).
    Every interacted item needs a title: ``cprec_recbole.data.domain.finish_domain`` cleans titles
    and drops untitled items with their interactions. The toolkit does the user sampling, k-core
    and splits. As a CPT domain, ``config`` has ``dataset`` and ``domain`` set to its name. Raise
    ``DataError`` naming the file and line for bad input. Optional ``domain.fingerprint(config)``:
    JSON-able data that identifies the source (``files_fingerprint(paths)``), so edited files
    rebuild cached stages (without it the key is the domain's class and attributes, so edits to
    its files go unseen). Optional ``domain.load_chunks(config) -> (items, chunks)``: the finished
    items and an iterator of interaction frames in load order (untitled items' dropped), which
    the CPT corpus streams so a domain larger than memory fits (without it, ``load``). A dataset
    name no domain claims is read as RecBole atomic files from
    ``<data_path>/<name>/<name>.inter|.item``.
    """


@hookspec
def register_prompt_templates(register: Register) -> None:
    """Add prompt templates: ``register("llara_hybrid", template)``.

    ``template`` is a ``cprec_recbole.llm.prompts.PromptTemplate`` (frozen dataclass; all its
    fields join the stage keys, so editing one retrains). ``text`` may use ``{history}``,
    ``{candidates}`` and ``{noun}`` (the template's ``noun``, else ``domain_noun``; CPT says
    "item") and ends right before the answer, which is always ``" <title>\\n"``. Each item
    renders with ``history_item`` / ``candidate_item`` from ``{title}``, joined by ``separator``.
    ``placeholders`` (only inside item formats) are tokens whose input embedding becomes the
    projected SASRec embedding of that item: such a hybrid template needs a model that trains
    SASRec (not LLaMA2ZeroShot). ``extra_tokens`` join the tokenizer with learned embeddings.
    Picked by ``prompt_template``, ``text_template`` (LLaRA's curriculum) and ``cpt_template``
    (the last two text only).
    """


@hookspec
def register_schedulers(register: Register) -> None:
    """Add learning-rate schedules: ``register("wsa", factory)``.

    ``factory(optimizer, phases, config)`` returns a ``torch.optim.lr_scheduler.LRScheduler``
    (``LambdaLR`` of the step is simplest) stepped after each optimizer step and checkpointed
    with its ``state_dict``. ``phases`` maps phase names to end steps in optimizer steps: SFT
    gives ``warmup`` (``warmup_ratio`` of the steps) and ``total``; CPT gives ``warmup``,
    ``stable``, ``total`` from the corpus phases. The optimizer's lr is ``learning_rate`` (SFT) or
    ``eta_h`` (CPT, whose ``config`` also has ``min_lr_ratio = eta_l / eta_h``). Decorate the
    factory with ``cprec_recbole.llm.schedulers.reads(key=default, ...)`` to declare its config
    keys: they join the training stage's key (changing one retrains) and pass the config check.
    SFT picks a schedule with ``lr_scheduler``, CPT with ``cpt_scheduler``.
    """


@hookspec
def register_candidate_samplers(register: Register) -> None:
    """Add negative samplers for candidate sets: ``register("uniform", sampler)``.

    ``sampler(interactions, users, num_negatives, rng)`` returns an array
    ``[len(users), num_negatives]`` of distinct item ids per row, each one the row's user never
    interacted with (``users`` may repeat; ``interactions`` has ``user_id, item_id, timestamp``;
    draw only from the seeded ``rng``). ``candidate_sampler`` picks it for the persisted
    valid/test sets and SFT's per-epoch training sets; the CPT corpus always samples uniformly.
    """


@hookspec
def register_evaluators(register: Register) -> None:
    """Add LLM answer evaluators: ``register("generate", evaluator)``.

    ``evaluator(model, tokenizer, samples, ctx) -> EvalOutput`` (``cprec_recbole.llm.inference``):
    ``samples`` is a list of ``LLMSample`` (raw item ids), ``ctx`` a ``RenderContext`` (template,
    titles, item embeddings and projector, config). Per sample: ``ranks``, the 0-based rank of
    the target among its candidates (``INVALID`` = -1 when the answer names no single candidate,
    ``UNRANKED`` when never ranked), ``valid`` and the raw ``answers``; the shared metric code
    turns ranks into HR@k/NDCG@k. Picked by ``inference`` (test) and ``valid_inference`` (SFT's
    validation); config keys of its own join no stage key (``--force eval`` reruns).
    """


@hookspec
def register_backbones(register: Register) -> None:
    """Add LLM backbones: ``register("smollm2-135m", loader)``; ``llm_backbone`` picks one.

    ``loader(config, corpus) -> (model, tokenizer)``: a ``transformers`` causal LM
    (``PreTrainedModel`` with ``generate``) without LoRA and its tokenizer. ``corpus`` is text of
    the dataset (titles, template sentence) for a loader that trains a tokenizer (tiny-random).
    The caller then pads with eos where there is no pad token, pads left, moves the model to the
    configured ``device``/``dtype`` if the loader did not, and adds special tokens and LoRA. Read
    weights from ``llm_path`` when given: it is in the stage keys, other keys are not. A loader
    that ignores ``corpus`` sets ``loader.reads_corpus = False``: the stages of one run (CPT,
    then SFT) then share one loaded base instead of reading the weights twice.
    """


@hookspec
def register_mixing_rules(register: Register) -> None:
    """Add rules that decide which all-domain mixed windows enter the CPT corpus:
    ``register("g1_g2", rule)``; ``rule(history_domains, target_domain)`` returns a bool mask
    over windows, True to keep (arrays ``[n, window]`` of domain ids, -1 for padding, and
    ``[n]``). The corpus uses the rule named by ``mixing_rule`` (built-ins: ``g1``, ``g2``,
    ``g1_g2``, ``all``); the name, not the code, is in the corpus stage key.
    """


@hookspec
def register_text_encoders(register):
    """Add sentence encoders for item text: ``register("all-minilm-l6-v2", loader)``.

    ``loader(config) -> (model, tokenizer)``: a ``transformers`` encoder in eval mode whose
    ``last_hidden_state`` is mean-pooled and L2-normalised per item title
    (``cprec_recbole.text_encoder.encode``); ``text_encoder_path`` may replace its source. Item
    embeddings are a stage (``item_text``) keyed by the data stage and ``text_encoder``,
    ``text_encoder_path``, ``text_max_tokens``, shared by every model that reads them.
    """


@hookspec
def register_experiments(register):
    """Add named experiments: ``register("table3", path)``, ``path`` a YAML file run by
    ``--experiment=table3 --dataset=D``. Its keys: ``runs`` (a list of ``{model, name,
    overrides, seed_key}``: ``seed_key`` is the key set to base + i for seed i, default ``seed``,
    null for a deterministic arm run once), ``seeds`` (default 4), ``metrics``, ``report``
    (``table``, ``buckets``: HR@1 by history length, ``cost``: time and memory), ``figure``
    (``bars`` or null), ``description``. See ``properties/experiments/``.
    """
