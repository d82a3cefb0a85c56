"""statex_dist.training.flops: the whole model's FLOPs per token, checked against counts written out by hand."""
from statex_dist.models.config import config_from_dict
from statex_dist.training.flops import forward_flops_per_token, train_flops_per_token


def test_gla_count_by_hand():
    cfg = config_from_dict({"arch": "gla", "vocab_size": 260, "hidden_size": 32, "num_layers": 2, "num_heads": [4, 1],
                            "use_short_conv": True})
    # D=32, K=16 (expand_k 0.5), V=32, gate rank r=16, MLP I=256 (fla: 2/3 * 4 * 32 rounded up to 256), W=4
    weights = 32 * 16 + 32 * 16 + 32 * 32 + 32 * 32 + 32 * 32 + (32 * 16 + 16 * 16) + 3 * 32 * 256  # q k v g o gk mlp
    assert weights == 29440
    conv = 4 * (16 + 16 + 32)                        # q, k, v short convs
    state = [4 * (16 // 4) * (32 // 4), 16 * 32]     # 4 heads of 4 x 8; 1 head of 16 x 32
    layers = [2 * weights + 2 * conv + 4 * s for s in state]
    head = 2 * 32 * 260                              # LM head over the real vocab (not the padded one)
    assert forward_flops_per_token(cfg) == sum(layers) + head == 59904 + 61440 + 16640
    assert train_flops_per_token(cfg) == 3 * (59904 + 61440 + 16640)


def test_gdn_count_by_hand():
    cfg = config_from_dict({"arch": "gdn", "vocab_size": 260, "hidden_size": 32, "num_layers": 2, "num_heads": [2, 1],
                            "num_v_heads": [4, 1], "key_dim": 16, "value_dim": 32})
    # D=32, K=16, V=32, MLP I=256, W=4; layer 0: 4 value heads (a, b rows), layer 1: 1
    weights = [32 * 16 + 32 * 16 + 32 * 32 + 32 * 32 + 32 * 32 + 2 * 32 * hv + 3 * 32 * 256 for hv in (4, 1)]
    conv = 4 * (16 + 16 + 32)                        # q, k, v short convs
    state = [4 * 8 * 8, 16 * 32]                     # 4 value heads of 8 x 8 (2 key heads of 8); 1 of 16 x 32
    layers = [2 * w + 2 * conv + 6 * s for w, s in zip(weights, state)]  # the state read twice, written once
    head = 2 * 32 * 260
    assert forward_flops_per_token(cfg) == sum(layers) + head == 59904 + 61056 + 16640


def test_mamba2_count_by_hand():
    cfg = config_from_dict({"arch": "mamba2", "vocab_size": 260, "hidden_size": 32, "num_layers": 1, "d_state": 8,
                            "headdim": 16, "ngroups": 1, "tie_word_embeddings": True})
    # E = 64 (expand 2), 4 heads, G=1, N=8, W=4
    in_proj = 32 * (64 + 64 + 2 * 8 + 4)             # [z | x | B | C | dt]
    out_proj = 64 * 32
    conv = 4 * (64 + 2 * 8)
    state = 64 * 8
    head = 2 * 32 * 260                              # tied: the LM head's matmul still runs
    assert forward_flops_per_token(cfg) == 2 * (in_proj + out_proj) + 2 * conv + 4 * state + head == 32896
