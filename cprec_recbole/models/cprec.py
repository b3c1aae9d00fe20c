"""CPRec: LLaRA whose LoRA starts from all-domain continual pre-training, then LLaRA's SFT.

Ma et al., "Large Language Model Empowered Recommendation Meets All-domain Continual
Pre-Training", arXiv 2504.08949. Stages: SASRec -> corpus -> CPT -> SFT -> evaluation; the CPT
settings (corpus, WSA schedule, ablation variant) are in ``properties/cpt.yaml``.
"""

from cprec_recbole.config import PROPERTIES
from cprec_recbole.models.llara import LLaRA


class CPRec(LLaRA):
    properties = PROPERTIES / "cpt.yaml"
    uses_rec_model = True
    fine_tunes = True
    uses_cpt = True
