"""RecBole 1.2.1 on today's stack, applied once on import.

We pin ``pandas<3`` (RecBole relies on ``fillna(inplace=True)`` without copy-on-write), so only
what pins cannot fix lives here:
- numpy 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``, which RecBole's ``Config``
  reads to re-create ``np.float``, ``np.long``... (its metrics and layers use those):
  :func:`numpy2_aliases` puts the three back as the numpy 1 aliases they were.
- torch >= 2.6 loads with ``weights_only=True``; RecBole pickles its ``Config`` into checkpoints, so
  our trainer loads them with :func:`load_checkpoint`.
- RecBole's ``Config`` parses ``sys.argv`` (pytest's or our CLI's flags leak in): :func:`no_argv`.
- RecBole's ``Trainer`` writes ``log_tensorboard/`` into the working directory:
  :func:`tensorboard_under` routes it under our output dir.
- Importing ``recbole.model.sequential_recommender`` runs SINE's module-level
  ``torch.autograd.set_detect_anomaly(True)``, which NaN-checks every gradient and records a stack
  per forward op for the whole process (measured: LLaRA SFT steps 1.7x slower). :func:`apply`
  imports it once and restores the caller's setting.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: The numpy 1 aliases numpy 2 removed that RecBole's ``Config.compatibility_settings`` reads.
NUMPY2_ALIASES = {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_}


def apply() -> None:
    """Silence warnings RecBole triggers on import; undo the anomaly mode its SINE module sets;
    give numpy 2 the aliases RecBole reads."""
    warnings.filterwarnings("ignore", category=FutureWarning, module="recbole")
    warnings.filterwarnings("ignore", message=".*TripleDES.*")
    numpy2_aliases()
    anomaly = torch.is_anomaly_enabled()
    import recbole.model.sequential_recommender  # noqa: F401  (runs SINE's module-level switch)

    torch.autograd.set_detect_anomaly(anomaly)


def numpy2_aliases() -> None:
    """Set the numpy 1 aliases numpy 2 lacks (a no-op on numpy 1, which has them)."""
    for name, value in NUMPY2_ALIASES.items():
        if name not in vars(np):
            setattr(np, name, value)


def load_checkpoint(path: str | Path, device: Any = "cpu") -> dict:
    """Load a RecBole checkpoint (it contains a pickled Config, so weights_only cannot be used)."""
    return torch.load(path, map_location=device, weights_only=False)


@contextlib.contextmanager
def no_argv() -> Iterator[None]:
    """Hide command-line flags from RecBole's Config, which would parse them as config keys."""
    saved = sys.argv
    sys.argv = saved[:1] or ["cprec_recbole"]
    try:
        yield
    finally:
        sys.argv = saved


@contextlib.contextmanager
def tensorboard_under(log_dir: Path) -> Iterator[None]:
    """Make RecBole's Trainer create its SummaryWriter in ``log_dir`` instead of the cwd."""
    import recbole.trainer.trainer as trainer_module
    from torch.utils.tensorboard import SummaryWriter

    original = trainer_module.get_tensorboard
    trainer_module.get_tensorboard = lambda logger: SummaryWriter(str(log_dir))
    try:
        yield
    finally:
        trainer_module.get_tensorboard = original
