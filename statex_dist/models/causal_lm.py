"""The language model around a stack of recurrent blocks, one class for every architecture: embedding ->
blocks -> final norm -> LM head (vocab-parallel, optionally tied). Each architecture names its embedding and
final norm as its own checkpoints do (fla GLA: ``embeddings`` / ``norm``; Mamba2: ``embedding`` /
``norm_f``), so parameter names match the layouts (``archs/<name>/layout.py``) without a renaming table."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.utils.checkpoint

from statex_dist.models import specs_for
from statex_dist.models.common import RMSNorm
from statex_dist.models.init import initialize
from statex_dist.models.recurrent_state import RecurrentState
from statex_dist.parallel import state
from statex_dist.parallel.megatron_layers import LMHead, embedding


class CausalLM(nn.Module):
    """``forward(input_ids [B, T])`` returns logits [B, T, vocab]; with ``labels`` [B, T] it returns the mean
    cross entropy (labels equal to -100 are ignored).

    ``state`` (a :class:`~statex_dist.models.recurrent_state.RecurrentState`): input_ids continue the tokens
    that state has seen (every layer starts from its recurrent and conv states) and the states after
    input_ids are written back, so consecutive calls on consecutive pieces of a sequence give the logits
    of the whole sequence. None (training): every sequence starts from zero states and nothing is kept.

    ``sequence_parallel`` (TP > 1; a no-op at TP = 1): the hidden states between sublayers are split over
    TP along time (statex_dist.parallel.sequence); T must then be a multiple of TP.

    No layer draws its own weights: ``init`` fills every shard from statex_dist.models.init (one scheme, the
    same full model at every layout); without it the weights are uninitialised, to be loaded.

    Under bf16 the embedding and the LM head weight are computed in bf16 (a lookup, a matmul), the final
    norm's weight in fp32; the cross entropy takes the logits upcast to fp32. The blocks' parameters: see
    the block and mixer classes.
    """
    EMBEDDING = "embedding"   # attribute names of the subclass's architecture
    NORM = "norm"
    BLOCK: type = nn.Module   # the block class, built as BLOCK(config, layer_index, megatron config, sequence_parallel=)

    def __init__(self, config, dtype: torch.dtype = torch.float32, init: bool = True,
                 sequence_parallel: bool = False, seed: int = 0):
        super().__init__()
        state.ensure_initialized()
        self.config = config
        self.sequence_parallel = sp = sequence_parallel and state.tp_size() > 1
        mp_cfg = state.megatron_config(dtype)
        specs = specs_for(config, state.tp_size())
        emb = specs[f"{self.EMBEDDING}.weight"]
        setattr(self, self.EMBEDDING, embedding(emb, mp_cfg, sequence_parallel=sp))
        self.layers = nn.ModuleList([self.BLOCK(config, i, mp_cfg, sequence_parallel=sp)
                                     for i in range(config.num_layers)])
        setattr(self, self.NORM, RMSNorm(specs[f"{self.NORM}.weight"], config.norm_eps, dtype, sequence_parallel=sp))
        self.lm_head = LMHead(specs.get("lm_head.weight", emb), config.vocab_size, mp_cfg, config.tie_word_embeddings,
                              sequence_parallel=sp)
        self.activation_checkpointing = False  # recompute each block in backward (the run config's option)
        if init:
            initialize(self, config, seed)

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None,
                state: Optional[RecurrentState] = None) -> torch.Tensor:
        emb = getattr(self, self.EMBEDDING)
        h = emb(input_ids)
        if state is None:
            for block in self.layers:
                if self.activation_checkpointing and self.training:
                    h = torch.utils.checkpoint.checkpoint(block, h, use_reentrant=False)
                else:
                    h = block(h)
        else:
            # continue from ``state`` (layer i's scan and conv states after the tokens before input_ids) and
            # leave in it the states after input_ids; no activation checkpointing on this path
            for i, block in enumerate(self.layers):
                h, state[i] = block(h, initial_state=state[i], output_final_state=True)
            state.tokens += input_ids.shape[1]
        local_logits = self.lm_head(getattr(self, self.NORM)(h), emb.weight)
        if labels is not None:
            return self.lm_head.loss(local_logits, labels)
        return self.lm_head.logits(local_logits)
