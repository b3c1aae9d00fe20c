"""The stopping rule of generation, apart from ``inference`` because subclassing transformers'
``StoppingCriteria`` imports transformers, which loading the evaluators must not."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import StoppingCriteria


class StopAtNewline(StoppingCriteria):
    """Row-wise stop once a generated token holds a newline: the answer's first line is all we
    parse, so the rest would be wasted decoding."""

    def __init__(self, newline_ids: Tensor, prompt_length: int = 0):
        self.newline_ids = newline_ids
        self.prompt_length = prompt_length

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
        ids = self.newline_ids.to(input_ids.device)
        return torch.isin(input_ids[:, self.prompt_length :], ids).any(-1)
