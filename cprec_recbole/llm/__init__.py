"""The LLM side: backbones, prompts, projector, batching, training and inference."""
