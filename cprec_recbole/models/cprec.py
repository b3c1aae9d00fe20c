"""CPRec: LLaRA whose LoRA starts from all-domain continual pre-training, then LLaRA's SFT.

Ma et al., "Large Language Model Empowered Recommendation Meets All-domain Continual
Pre-Training", arXiv 2504.08949. The CPT settings (corpus, WSA schedule, ablation variant) are
in ``properties/cpt.yaml``.
"""

from cprec_recbole.config import PROPERTIES
from cprec_recbole.models.llara import LLaRA


class CPRec(LLaRA):
    properties = PROPERTIES / "cpt.yaml"
    #: SASRec (item embeddings of the hybrid prompts) -> the other domains' behaviour corpus ->
    #: continual pre-training of LoRA (WSA) -> LLaRA's SFT from it -> 1 + 19 candidate ranking
    pipeline = ("data", "sasrec", "corpus", "cpt", "sft", "eval")
