"""Names of the LLM side that the config check needs, in a module that imports nothing, so that
checking an ID model's config does not import transformers and peft."""

#: The CPT data orders of the paper's Fig. 4; ``DS+Mix(A)`` is CPRec.
VARIANTS = ("DS", "DS+Mix(N)", "DS+Mix(S)", "DS+Mix(A)")
#: The ID model whose item embeddings an LLM model's hybrid prompt projects.
REC_MODEL = "SASRec"
