"""The paper's candidate sampler: negatives uniform over the items a user never interacted with."""

from cprec_recbole.data.candidates import uniform_negatives
from cprec_recbole.hookspecs import hookimpl


@hookimpl
def register_candidate_samplers(register):
    register("uniform", uniform_negatives)
