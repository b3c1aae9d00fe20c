"""Built-in experiments: every YAML file of ``properties/experiments/``."""

from cprec_recbole.config import PROPERTIES
from cprec_recbole.hookspecs import hookimpl


@hookimpl
def register_experiments(register):
    for path in sorted((PROPERTIES / "experiments").glob("*.yaml")):
        register(path.stem, path)
