"""fla's GLA checkpoints (fla-hub/gla-340M-15B, gla-1.3B-100B): GLAConfig + safetensors, ``model.`` prefix."""
from __future__ import annotations

from statex_dist.archs.gla.config import GLAConfig
from statex_dist.checkpoint.errors import CheckpointError
from statex_dist.checkpoint.hf_format import HFFormat

UNSUPPORTED = {  # fla options the models here do not implement, with the value they must have
    "num_kv_heads": None, "feature_map": None, "elementwise_affine": True, "use_gv": False,
    "attnres_block_size": None, "attn": None, "hidden_act": "swish", "use_gk": True,
}


class FlaGLA(HFFormat):
    name, arch, prefix = "fla-gla", "gla", "model."
    description = "fla GLA (model_type 'gla')"
    per_layer_key = "statex_num_heads"

    @classmethod
    def matches(cls, hf_cfg: dict) -> bool:
        return hf_cfg.get("model_type") in ("gla", "statex_gla")  # statex_gla: heads differing per layer

    @classmethod
    def read_config(cls, hf_cfg: dict) -> GLAConfig:
        for key, want in UNSUPPORTED.items():
            if hf_cfg.get(key, want) != want:
                raise CheckpointError(f"config.json: {key}={hf_cfg[key]!r} is not supported (needs {want!r})")
        layers = hf_cfg["num_hidden_layers"]
        return GLAConfig(
            vocab_size=hf_cfg["vocab_size"], hidden_size=hf_cfg["hidden_size"], num_layers=layers,
            num_heads=cls.read_per_layer(hf_cfg, hf_cfg.get("num_heads", 4), layers),
            expand_k=hf_cfg.get("expand_k", 0.5), expand_v=hf_cfg.get("expand_v", 1.0),
            hidden_ratio=hf_cfg.get("hidden_ratio") or 4, intermediate_size=hf_cfg.get("intermediate_size"),
            use_short_conv=hf_cfg.get("use_short_conv", False), conv_size=hf_cfg.get("conv_size", 4),
            use_output_gate=hf_cfg.get("use_output_gate", True), clamp_min=hf_cfg.get("clamp_min"),
            norm_eps=hf_cfg.get("norm_eps", 1e-6), tie_word_embeddings=hf_cfg.get("tie_word_embeddings", False),
            fuse_norm=hf_cfg.get("fuse_norm", True), expanded_layers=cls.read_expanded(hf_cfg),
        )

    @classmethod
    def write_config(cls, config: GLAConfig, base: dict | None = None) -> dict:
        hf_cfg = dict(base or {"architectures": ["GLAForCausalLM"], "model_type": "gla"})
        uniform = len(set(config.num_heads)) == 1
        hf_cfg.update(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
            num_heads=config.num_heads[0] if uniform else max(config.num_heads), expand_k=config.expand_k,
            expand_v=config.expand_v, hidden_ratio=config.hidden_ratio, intermediate_size=config.intermediate_size,
            use_short_conv=config.use_short_conv, conv_size=config.conv_size,
            use_output_gate=config.use_output_gate, clamp_min=config.clamp_min, norm_eps=config.norm_eps,
            tie_word_embeddings=config.tie_word_embeddings, fuse_norm=config.fuse_norm)
        cls.write_statex_keys(hf_cfg, config.num_heads, config.expanded_layers)
        return hf_cfg

    @classmethod
    def hf_names(cls, internal: str, config: GLAConfig) -> list[str]:
        if internal.endswith("attn.g_norm.weight"):
            fused = internal.replace("g_norm.weight", "g_norm_swish_gate.weight")
            plain = cls.prefix + internal
            fused = cls.prefix + fused
            return [fused, plain] if config.fuse_norm and config.use_output_gate else [plain, fused]
        if internal == "lm_head.weight":
            return [internal]
        return [cls.prefix + internal]

    @classmethod
    def optional(cls, hf_name: str, config: GLAConfig) -> bool:
        return hf_name == "lm_head.weight" and config.tie_word_embeddings
