"""diffusers' attention modules without their per-call signature check.

`Attention.forward` asks `inspect.signature` for its processor's parameters on every call,
only to filter, and warn about, extra keyword arguments (cross_attention_kwargs), which
noisealign never passes: about 5% of the tiny SD UNet's forward time on a CPU, Python time a
GPU waits through too. `DirectAttention` calls the processor straight away when there are no
extra keyword arguments, with the same arguments as before, so the numbers do not change; a
call with extra ones takes diffusers' own path.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from torch import Tensor


class DirectAttention(Attention):
    """An `Attention` whose call without extra keyword arguments goes straight to its processor."""

    def forward(self, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                attention_mask: Tensor | None = None, **cross_attention_kwargs) -> Tensor:
        if cross_attention_kwargs:
            return super().forward(hidden_states, encoder_hidden_states, attention_mask, **cross_attention_kwargs)
        return self.processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask)


def call_processors_directly(*modules: torch.nn.Module) -> None:
    """Turn every plain `Attention` inside `modules` into a `DirectAttention` (in place: the same
    weights and processor)."""
    for module in modules:
        for attention in module.modules():
            if type(attention) is Attention:
                attention.__class__ = DirectAttention
