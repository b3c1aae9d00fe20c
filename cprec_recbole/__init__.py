"""cprec-recbole: LLM recommenders (LLaRA, CPRec) and RecBole baselines on one shared protocol."""

from cprec_recbole import compat as _compat
from cprec_recbole.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]

_compat.apply()
