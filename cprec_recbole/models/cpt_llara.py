"""CPTLLaRA: LLaRA's backbone with the LoRA weights of CPRec's continual pre-training, no SFT.

The paper's "CPRec w/o SFT" (Table 4) and "CPT-LLaRA" (Table 3): Ma et al., "Large Language Model
Empowered Recommendation Meets All-domain Continual Pre-Training", arXiv 2504.08949. Without
SFT the projector would be untrained, so it is scored on the unified text-only prompt that CPT
trained on (``properties/model/CPTLLaRA.yaml``); CPT settings are in ``properties/cpt.yaml``.
"""

from cprec_recbole.config import PROPERTIES
from cprec_recbole.models.llara import LLaRA


class CPTLLaRA(LLaRA):
    properties = PROPERTIES / "cpt.yaml"
    pipeline = ("data", "corpus", "cpt", "eval")
