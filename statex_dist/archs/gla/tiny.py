"""The embedded tiny GLA (statex_dist.tiny; tools/pretrain_tiny.py --arch gla).

Two layers of 8 heads of 8x8 (expand_k 1): merging layer 0's into one head of 64x64 grows its state 8x while
layer 1 keeps the pretrained recall, as the paper expands a subset. With 4 heads of 16x16 (4x, as in
GLA-1.3B) the pretrained model already recalled 0.44 at N=64, LPT kept most of that, and the merge lost more
than the larger state won back in 1,500 steps; the earlier 1-layer tiny GLA (benchmarks/results/gla-1layer-
seed0) is measured in BENCHMARKS.md. 178,256 parameters.
"""
from statex_dist.archs.record import TinyRecipe

GATE_BIAS = (1.0, 4.0)  # gate bias U(1, 4): forget gates near 1 at the start, a long initial memory

TINY = TinyRecipe(
    config={"hidden_size": 64, "num_layers": 2, "num_heads": 8, "expand_k": 1.0, "expand_v": 1.0,
            "use_short_conv": True, "conv_size": 4, "hidden_ratio": 2, "tie_word_embeddings": True,
            "fuse_norm": True},
    shipped_seed=1,
    init_options={"gate_bias": GATE_BIAS},
)
