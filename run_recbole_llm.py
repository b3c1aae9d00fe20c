"""Run a model on a dataset: ``python run_recbole_llm.py --model=SASRec --dataset=Game``."""

import sys

from cprec_recbole.cli import main

if __name__ == "__main__":
    sys.exit(main())
