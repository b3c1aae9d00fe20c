"""Names of the LLM side that the config check needs, in a module that imports nothing, so that
checking an ID model's config does not import transformers and peft."""

#: The CPT data orders of the paper's Fig. 4; ``DS+Mix(A)`` is CPRec.
VARIANTS = ("DS", "DS+Mix(N)", "DS+Mix(S)", "DS+Mix(A)")
#: The ID model whose item embeddings an LLM model's hybrid prompt projects.
REC_MODEL = "SASRec"
#: SFT's training objectives: the answer tokens' loss, the listwise one over the candidates'
#: scores, or both mixed by ``sft_objective_mix``.
SFT_OBJECTIVES = ("answer", "listwise", "mix")
#: The item embeddings evaluation feeds the projector: as trained, another item's (a seeded
#: derangement, for the diagnostics), or none (the text-only prompt).
EVAL_ITEM_EMBEDDINGS = ("trained", "permuted", "none")
#: The backbone dtypes a run may ask for; fp16 is refused for the reason below.
DTYPE_CHOICES = ("auto", "bf16", "fp32")
FP16_REFUSED = (
    "fp16 is refused: LoRA and projector training in fp16 needs a gradient scaler, which the "
    "training loop has not; use bf16 (GPUs from Ampere on, CPUs with AVX512-BF16/AMX) or fp32 "
    "(auto picks the faster of the two)"
)
