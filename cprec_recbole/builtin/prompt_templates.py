"""Built-in prompt templates: LLaRA's hybrid and text-only prompts, CPRec's unified one and
Chat-REC's.

LLaRA's sentence names the dataset's noun ("game"); the unified template of the paper's Table 1
forces "item" so that one corpus mixes every domain.
"""

from cprec_recbole.hookspecs import hookimpl
from cprec_recbole.llm.prompts import PromptTemplate

SENTENCE = (
    "This user has bought {history} in the previous. Please predict the next {noun} this user "
    "will buy. The {noun} title candidates are {candidates}. Choose only one {noun} from the "
    "candidates. The answer is"
)

LLARA_HYBRID = PromptTemplate(
    text=SENTENCE,
    history_item="{title} [HistoryEmb]",
    candidate_item="{title} [CansEmb]",
    placeholders=("[HistoryEmb]", "[CansEmb]"),
)
LLARA_TEXT = PromptTemplate(
    text=SENTENCE,
    history_item="{title} [PH]",
    candidate_item="{title} [PH]",
    extra_tokens=("[PH]",),
)
UNIFIED = PromptTemplate(text=SENTENCE, noun="item")
#: Chat-REC's way of asking (Gao et al., 2023): a role, the history, the candidate set, one pick.
CHATREC = PromptTemplate(
    text=(
        "I want you to act as a recommender system. The user has bought these {noun}s, oldest "
        "first: {history}. The candidate {noun}s are: {candidates}. Based on the user's history, "
        "recommend the one candidate {noun} the user is most likely to buy next. The answer is"
    ),
    separator="; ",  # titles contain commas
)


@hookimpl
def register_prompt_templates(register):
    register("llara_hybrid", LLARA_HYBRID)
    register("llara_text", LLARA_TEXT)
    register("unified", UNIFIED)
    register("chatrec", CHATREC)
