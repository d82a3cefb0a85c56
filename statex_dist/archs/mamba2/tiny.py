"""The embedded tiny Mamba2 (statex_dist.tiny; tools/pretrain_tiny.py --arch mamba2).

Two layers, d_state 8 (grown 8x in layer 0): with d_state 16 it recalled 0.96 at N=32 by the time its text
perplexity came down, leaving an expansion nothing to win at N <= 64. 87,056 parameters. Its A starts
as transformers' Mamba2 draws it, A = -(1..nheads) (``a_range=None``; ``--a-range`` draws mamba_ssm's instead).

The shipped weights were pretrained from an earlier random draw than today's per-tensor one
(statex_dist.models.init), so ``tools/pretrain_tiny.py --arch mamba2 --seed 0`` makes a model of the same
recipe and quality, not the same bits.
"""
from statex_dist.archs.record import TinyRecipe

TINY = TinyRecipe(
    config={"hidden_size": 64, "num_layers": 2, "d_state": 8, "headdim": 16, "expand": 2, "chunk_size": 64,
            "tie_word_embeddings": True},
    shipped_seed=0,
    init_options={"a_range": None},
)
