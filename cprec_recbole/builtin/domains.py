"""Built-in domains. Datasets under ``data_path`` need no registration (atomic files)."""

from cprec_recbole.hookspecs import hookimpl


@hookimpl
def register_domains(register):
    """Nothing yet: the Amazon-2018 converter registers its domains here."""
