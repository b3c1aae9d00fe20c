"""What a command imports: an ID-model run does not pay for the LLM stack, nor for Ray (the
optional [tune] extra; RecBole's own quick_start, which imports it, is never imported)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

# The steps of ``quick_start.run`` for --model=SASRec up to its first stage: the checked config
# (plugins, layers, config check) and every module the ID-model stages import, lazy ones included.
RECBOLE_RUN = """
import sys
import cprec_recbole.data.prepare, cprec_recbole.rec_model, cprec_recbole.text_encoder
import cprec_recbole.quick_start
from cprec_recbole.command import setup
from cprec_recbole.pipeline import pipeline_of
config, plugins, _ = setup("SASRec", "Game", [], {"epochs": 1}, [])
assert pipeline_of(plugins.models.get("SASRec")) == ("data", "rec_model")
print(" ".join(sorted({"transformers", "peft", "ray"} & set(sys.modules))))
"""


def test_a_recbole_model_run_imports_neither_transformers_nor_peft_nor_ray():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", RECBOLE_RUN]
    child = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO, check=False)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == ""
