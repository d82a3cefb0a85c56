"""The state a recurrent LM carries from one call to the next: per layer, the scan's state and the tails of
the short convolutions.

A sequence split into consecutive pieces gives, piece by piece, the logits of the whole sequence when each
piece starts from the state the previous one ended in::

    state = RecurrentState(model.config.num_layers)
    for s in range(0, T, S):
        logits = model(ids[:, s:s + S], state=state)   # reads state, then holds the state after s + S

so memory is that of one piece (the state does not grow with T). The mixers take and return a
:class:`MixerState` (``initial_state`` / ``output_final_state``, as the ops do), not an evaluation object:
context parallelism can hand a rank the state of the ranks before it the same way.

Shapes (B batch, C a conv's local channels, W its width; the scan states as each op defines them):

- ``MixerState.recurrent``: GLA and Gated DeltaNet [B, heads, d_k, d_v local], Mamba2 [B, heads, headdim,
  d_state]; fp32, as every scan (PyTorch path and kernel) keeps it.
- ``MixerState.conv[name]``: the last W-1 inputs of that short convolution [B, C, W-1] (zeros before the
  first token), in the activations' dtype; names as the mixer's convs (``q``, ``k``, ``v``; Mamba2 ``xBC``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch


@dataclass
class MixerState:
    """One token mixer's state after some tokens; None / a missing conv entry: no tokens yet (zeros)."""
    recurrent: Optional[torch.Tensor] = None
    conv: dict[str, torch.Tensor] = field(default_factory=dict)

    def tensors(self) -> Iterator[torch.Tensor]:
        if self.recurrent is not None:
            yield self.recurrent
        yield from self.conv.values()


class RecurrentState:
    """Every layer's :class:`MixerState` for one batch of sequences, created empty (the state before the first
    token); ``CausalLM.forward(ids, state=s)`` reads ``s[i]`` in layer i and writes back the state after ids.

    ``tokens`` counts the positions the state has consumed (the next call's first position).
    """

    def __init__(self, num_layers: int):
        self.layers: list[Optional[MixerState]] = [None] * num_layers
        self.tokens = 0

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, layer: int) -> Optional[MixerState]:
        return self.layers[layer]

    def __setitem__(self, layer: int, value: MixerState) -> None:
        self.layers[layer] = value

    def nbytes(self) -> int:
        """Bytes held: constant in the number of tokens consumed."""
        return sum(t.numel() * t.element_size() for m in self.layers if m is not None for t in m.tensors())
