"""ChatRec: the untrained backbone asked Chat-REC's way to pick from the candidate list.

Reference:
    Gao et al. "Chat-REC: Towards Interactive and Explainable LLMs-Augmented Recommender
    System." arXiv 2303.14524, 2023.

Chat-REC hands a conversational LLM (ChatGPT) the user's history and a candidate set from a
traditional recommender and asks it to choose; the CPRec paper uses it as a zero-shot LLM
baseline. Here the candidate set is the shared 1 + 19 one and the LLM is the configured backbone
(no API calls), so ChatRec differs from LLaMA2ZeroShot only by its prompt (``chatrec``:
instruction-style, role stated, titles separated by semicolons).
"""

from cprec_recbole.models.llama2_zero_shot import LLaMA2ZeroShot


class ChatRec(LLaMA2ZeroShot):
    """Zero-shot, Chat-REC's prompt (``properties/model/ChatRec.yaml``)."""
