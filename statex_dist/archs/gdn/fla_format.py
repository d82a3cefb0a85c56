"""fla's Gated DeltaNet checkpoints (fla-hub/gated-deltanet-*): GatedDeltaNetConfig + safetensors, ``model.``
prefix."""
from __future__ import annotations

import math

from statex_dist.archs.gdn.config import OUTPUT_GATE_ACTIVATIONS, GDNConfig
from statex_dist.checkpoint.errors import CheckpointError
from statex_dist.checkpoint.hf_format import HFFormat

# fla options the models here do not implement, with the value they must have: hybrid attention layers,
# attention residuals, negative eigenvalues (beta in (0, 2)), another MLP activation, the L2-warp loss term
UNSUPPORTED = {"attn": None, "attnres_block_size": None, "allow_neg_eigval": False, "hidden_act": "swish",
               "use_l2warp": False}
V_HEADS_KEY = "statex_num_v_heads"   # the value heads of each layer, where layers differ


def expand_v_of(head_v: int, head_dim: int) -> float:
    """fla's ``expand_v`` for value heads of ``head_v`` beside key heads of ``head_dim``: fla builds
    ``int(head_dim * expand_v)`` channels, so where the rounded quotient times head_dim falls just below
    head_v (head_dim 7, head_v 61), the next float up."""
    e = head_v / head_dim
    return e if int(head_dim * e) >= head_v else math.nextafter(e, math.inf)


class FlaGatedDeltaNet(HFFormat):
    name, arch, prefix = "fla-gated-deltanet", "gdn", "model."
    description = "fla Gated DeltaNet (model_type 'gated_deltanet')"
    per_layer_key = "statex_num_heads"

    @classmethod
    def matches(cls, hf_cfg: dict) -> bool:
        # statex_gated_deltanet: heads differing per layer
        return hf_cfg.get("model_type") in ("gated_deltanet", "statex_gated_deltanet")

    @classmethod
    def read_config(cls, hf_cfg: dict) -> GDNConfig:
        for key, want in UNSUPPORTED.items():
            if hf_cfg.get(key, want) != want:
                raise CheckpointError(f"config.json: {key}={hf_cfg[key]!r} is not supported (needs {want!r})")
        act = hf_cfg.get("output_gate_activation", "swish")
        if act not in OUTPUT_GATE_ACTIVATIONS:
            raise CheckpointError(f"config.json: output_gate_activation={act!r} is not supported "
                                  f"(needs one of {list(OUTPUT_GATE_ACTIVATIONS)})")
        layers = hf_cfg["num_hidden_layers"]
        # fla: key_dim = num_heads * head_dim, value_dim = num_v_heads * int(head_dim * expand_v)
        h, head_dim = hf_cfg.get("num_heads", 6), hf_cfg.get("head_dim", 256)
        hv = hf_cfg.get("num_v_heads") or h
        head_v = int(head_dim * hf_cfg.get("expand_v", 2.0))
        return GDNConfig(
            vocab_size=hf_cfg["vocab_size"], hidden_size=hf_cfg["hidden_size"], num_layers=layers,
            num_heads=cls.read_per_layer(hf_cfg, h, layers),
            num_v_heads=list(hf_cfg.get(V_HEADS_KEY) or [hv] * layers),
            key_dim=h * head_dim, value_dim=hv * head_v,
            hidden_ratio=hf_cfg.get("hidden_ratio") or 4, intermediate_size=hf_cfg.get("intermediate_size"),
            use_gate=hf_cfg.get("use_gate", True), use_short_conv=hf_cfg.get("use_short_conv", True),
            conv_size=hf_cfg.get("conv_size", 4), output_gate_activation=act, norm_eps=hf_cfg.get("norm_eps", 1e-6),
            tie_word_embeddings=hf_cfg.get("tie_word_embeddings", False), fuse_norm=hf_cfg.get("fuse_norm", True),
            expanded_layers=cls.read_expanded(hf_cfg),
        )

    @classmethod
    def write_config(cls, config: GDNConfig, base: dict | None = None) -> dict:
        hf_cfg = dict(base or {"architectures": ["GatedDeltaNetForCausalLM"], "model_type": "gated_deltanet"})
        # the stock keys describe the layer of the most heads (every layer alike: each layer); the totals
        # key_dim = num_heads * head_dim and value_dim = num_v_heads * head_dim * expand_v hold in every layer
        h, hv = max(config.num_heads), max(config.num_v_heads)
        head_dim = config.key_dim // h
        hf_cfg.update(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
            num_heads=h, num_v_heads=hv, head_dim=head_dim, expand_v=expand_v_of(config.value_dim // hv, head_dim),
            hidden_ratio=config.hidden_ratio, intermediate_size=config.intermediate_size,
            use_gate=config.use_gate, use_short_conv=config.use_short_conv, conv_size=config.conv_size,
            output_gate_activation=config.output_gate_activation, norm_eps=config.norm_eps,
            tie_word_embeddings=config.tie_word_embeddings, fuse_norm=config.fuse_norm)
        hf_cfg.pop(V_HEADS_KEY, None)
        if cls.write_statex_keys(hf_cfg, config.num_heads, config.expanded_layers) or len(set(config.num_v_heads)) > 1:
            hf_cfg[cls.per_layer_key] = list(config.num_heads)
            hf_cfg[V_HEADS_KEY] = list(config.num_v_heads)
        return hf_cfg

    @classmethod
    def hf_names(cls, internal: str, config: GDNConfig) -> list[str]:
        return [internal] if internal == "lm_head.weight" else [cls.prefix + internal]

    @classmethod
    def optional(cls, hf_name: str, config: GDNConfig) -> bool:
        return hf_name == "lm_head.weight" and config.tie_word_embeddings
