"""The embedded tiny Gated DeltaNet (statex_dist.tiny; tools/pretrain_tiny.py --arch gdn).

Three layers of 4 key heads of 16 and 8 value heads of 8 (grouped value attention, 128 state floats of 16 x 8
per value head, as fla's GatedDeltaNet with num_v_heads = 2 num_heads): merging layer 0's heads into one of
64 x 64 grows its state 4x while layers 1 and 2 keep the pretrained recall, as the paper expands a subset.
Short convolutions and the output gate on, as in fla's defaults.
"""
from statex_dist.archs.record import TinyRecipe

TINY = TinyRecipe(
    config={"hidden_size": 64, "num_layers": 3, "num_heads": 4, "num_v_heads": 8, "key_dim": 64,
            "value_dim": 64, "use_short_conv": True, "conv_size": 4, "use_gate": True, "hidden_ratio": 2,
            "tie_word_embeddings": True},
    shipped_seed=1,
)
