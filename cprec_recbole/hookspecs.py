"""Every hook a cprec_recbole plugin can implement.

A plugin is a module (or object) with functions decorated by ``@cprec_recbole.hookimpl`` whose
names match the specs below. Each hook receives a ``register`` callable; call it once per thing
the plugin adds: ``register(name, thing)``. Names are global per kind: registering a name that
another plugin already registered is an error that names both plugins. Built-ins are registered
through these same hooks (see ``cprec_recbole/builtin/``), so a plugin can do everything they do.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("cprec_recbole")
hookimpl = pluggy.HookimplMarker("cprec_recbole")


@hookspec
def register_models(register):
    """Add recommender models: ``register("SASRec", cls)``.

    ``cls`` is either a RecBole ``SequentialRecommender`` subclass (trained and scored by the
    shared ID-model pipeline) or a class with a ``run(context)`` classmethod that runs its own
    stage pipeline and returns the evaluator's metrics. Its default hyperparameters are read from
    ``properties/model/<name>.yaml`` beside the package, or from ``cls.properties`` (a YAML path).
    """


@hookspec
def register_domains(register):
    """Add data domains: ``register("Game", domain)``.

    ``domain`` has ``load(config) -> (interactions, items)``: two DataFrames with columns
    ``user_id, item_id, timestamp`` and ``item_id, title``. Raise ``DataError`` naming the file
    and line for bad input. A dataset name that no domain claims is read as RecBole atomic files
    from ``<data_path>/<name>/<name>.inter|.item``.
    """


@hookspec
def register_prompt_templates(register):
    """Add prompt templates: ``register("llara_hybrid", template)``.

    ``template`` is data: a format string with named fields (``history``, ``candidates``,
    ``noun``...) plus how one item renders (e.g. ``"{title} [HistoryEmb]"``).
    """


@hookspec
def register_schedulers(register):
    """Add learning-rate schedules: ``register("wsa", factory)``.

    ``factory(optimizer, phases, config)`` returns a ``torch.optim.lr_scheduler.LRScheduler``
    stepped once per optimizer step; ``phases`` maps phase names to end steps (always ``total``,
    plus ``warmup`` and, for CPT, ``stable``: warm-up / stable / annealing come from the corpus).
    Decorate the factory with ``cprec_recbole.llm.schedulers.reads(key=default, ...)`` to name
    the config keys it reads: they join the training stage's cache key, so changing one retrains.
    SFT picks a schedule with ``lr_scheduler``, CPT with ``cpt_scheduler``.
    """


@hookspec
def register_candidate_samplers(register):
    """Add negative samplers for candidate sets: ``register("uniform", sampler)``.

    ``sampler(interactions, users, num_negatives, rng)`` returns an array
    ``[len(users), num_negatives]`` of item ids each user never interacted with (``users`` may
    repeat; ``interactions`` has ``user_id, item_id, timestamp``).
    """


@hookspec
def register_evaluators(register):
    """Add LLM answer evaluators: ``register("generate", evaluator)``.

    ``evaluator(model, tokenizer, samples, ctx) -> EvalOutput``: per user the rank of the
    positive among its candidates (-1 for an invalid answer), whether the answer was valid, and
    the raw answer (see ``cprec_recbole/llm/inference.py``); the shared metric code turns ranks
    into HR@k/NDCG@k.
    """


@hookspec
def register_backbones(register):
    """Add LLM backbones: ``register("smollm2-135m", loader)``.

    ``loader(config, corpus) -> (model, tokenizer)``: a ``transformers`` causal LM and its
    tokenizer, on the configured device and dtype, without LoRA (the caller adds it). ``corpus``
    is the dataset's text (titles, prompt), for backbones that train a tokenizer (tiny-random).
    """


@hookspec
def register_mixing_rules(register):
    """Add rules that decide which all-domain mixed windows enter the CPT corpus:
    ``register("g1_g2", rule)``; ``rule(history_domains, target_domain)`` returns a bool mask
    over windows (arrays ``[n, window]`` of domain ids, -1 for padding, and ``[n]``). The corpus
    uses the rule named by ``mixing_rule`` (built-ins: ``g1``, ``g2``, ``g1_g2``, ``all``).
    """
