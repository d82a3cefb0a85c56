"""The Python entry point users and external checks rely on: ``load_model(path)``."""
from __future__ import annotations

import os

import torch

from statex_dist.checkpoint import load_hf_into, read_hf_config
from statex_dist.checkpoint.sharded import ShardedCheckpoint, is_sharded
from statex_dist.models import build_model, specs_for
from statex_dist.parallel import state


def load_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Load a checkpoint folder on this process (debug mode: the CPU, a world of one if none exists).

    ``path`` is a Hugging Face folder in fla GLA, mamba_ssm Mamba2 or transformers Mamba2 format, or a
    sharded checkpoint of this project (any TP x PP layout).
    The returned model maps ``input_ids`` [batch, seq] (LongTensor) to logits [batch, seq, vocab_size].
    """
    state.ensure_initialized()
    if is_sharded(path):
        ckpt = ShardedCheckpoint(path)  # verifies every file against the manifest's digests
        model = build_model(ckpt.config, dtype=dtype, init=False)
        ckpt.load_into(model, state.tp_rank(), state.tp_size())
        return model.eval()
    fmt, config = read_hf_config(path)
    model = build_model(config, dtype=dtype, init=False)
    load_hf_into(model, path, fmt, specs_for(config, state.tp_size()))
    return model.eval()
