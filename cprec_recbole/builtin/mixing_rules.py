"""Built-in mixing rules for the CPT corpus: G1, G2, both (the default) and none."""

from cprec_recbole.data.mixing import MIXING_RULES
from cprec_recbole.hookspecs import hookimpl


@hookimpl
def register_mixing_rules(register):
    for name, rule in MIXING_RULES.items():
        register(name, rule)
